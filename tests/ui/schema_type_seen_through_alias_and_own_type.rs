// The derive asks each field's type what it stores (`ToValue::KIND` and `NULLABLE`), so an
// alias or the app's own type is checked against its column as surely as `i64`.
use d1_sync::{D1Sync, ToValue, Value, ValueKind};

type AccountNumber = i64;

/// Cents, stored as an integer.
struct Cents(i64);

impl ToValue for Cents {
    const KIND: ValueKind = ValueKind::Integer;
    fn to_value(&self) -> Value {
        Value::Integer(self.0)
    }
}

/// A rate that may be missing.
type MaybeRate = Option<f64>;

#[derive(D1Sync)]
#[d1(table = "ledger", schema = "ui/schemas/shop")]
struct Entry {
    #[d1(primary_key)]
    entry_id: i64,
    account: AccountNumber,
    amount: Cents,
    rate: MaybeRate,
}

#[derive(D1Sync)]
#[d1(table = "orders", schema = "ui/schemas/shop")]
struct Order {
    #[d1(primary_key)]
    id: i64,
    customer_id: String,
    total_cents: Option<Cents>,
    note: Option<String>,
}

fn main() {}
