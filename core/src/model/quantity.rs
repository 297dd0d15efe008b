//! Kubernetes quantities ("64Mi", "1G", "4096", "1.5Gi", "1e6") as whole bytes.

/// The largest size ipclink accepts for one object or one link (1 TiB).
pub const MAX_BYTES: u64 = 1 << 40;

/// Why a quantity was refused; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the Kubernetes quantity form.
    #[error(
        "{0:?} is not a quantity; use an integer with an optional suffix Ki, Mi, Gi, Ti, k, M, G, T (e.g. \"64Mi\")"
    )]
    Syntax(String),
    /// Zero or negative.
    #[error("{0:?} must be greater than 0")]
    NotPositive(String),
    /// Over [`MAX_BYTES`].
    #[error("{0:?} is too large; at most 1Ti")]
    TooLarge(String),
    /// Not a whole number of bytes.
    #[error("{0:?} is not a whole number of bytes")]
    Fractional(String),
}

/// Parses a quantity into bytes, in 1..=[`MAX_BYTES`].
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let s = text.trim();
    let syntax = || QuantityError::Syntax(text.to_owned());
    if s.starts_with('-') {
        return Err(QuantityError::NotPositive(text.to_owned()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(syntax());
    }
    // Multiplier as (numerator, power of ten) so that "1.5Gi" stays exact.
    let (mult, exp10): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| syntax())?;
            if !(0..=30).contains(&exp) {
                return Err(QuantityError::TooLarge(text.to_owned()));
            }
            (1, exp)
        }
        _ => return Err(syntax()),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.len() + frac_part.len() > 30 {
        return Err(QuantityError::TooLarge(text.to_owned()));
    }
    let mantissa: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| syntax())?;
    let scale = exp10 - frac_part.len() as i32;
    let value = if scale >= 0 {
        mantissa
            .checked_mul(mult)
            .and_then(|v| v.checked_mul(10u128.checked_pow(scale as u32)?))
            .ok_or_else(|| QuantityError::TooLarge(text.to_owned()))?
    } else {
        let div = 10u128.pow((-scale) as u32);
        let num = mantissa
            .checked_mul(mult)
            .ok_or_else(|| QuantityError::TooLarge(text.to_owned()))?;
        if !num.is_multiple_of(div) {
            return Err(QuantityError::Fractional(text.to_owned()));
        }
        num / div
    };
    if value == 0 {
        return Err(QuantityError::NotPositive(text.to_owned()));
    }
    if value > u128::from(MAX_BYTES) {
        return Err(QuantityError::TooLarge(text.to_owned()));
    }
    Ok(value as u64)
}

/// Formats bytes the way users write them ("64Mi" when exact, else plain bytes).
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_kubernetes_forms() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1k"), Ok(1000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("1e6"), Ok(1_000_000));
        assert_eq!(parse_bytes("1Ti"), Ok(MAX_BYTES));
    }

    #[test]
    fn refuses_with_a_reason() {
        assert!(matches!(
            parse_bytes("0"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            parse_bytes("-1Mi"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            parse_bytes("9Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_bytes("1e20"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_bytes("2Ti"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(parse_bytes("abc"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_bytes("1MB"), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse_bytes("1.2.3"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(
            parse_bytes("0.5"),
            Err(QuantityError::Fractional(_))
        ));
        assert!(matches!(parse_bytes(""), Err(QuantityError::Syntax(_))));
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_bytes(64 << 20), "64Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
