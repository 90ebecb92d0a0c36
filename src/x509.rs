//! A certificate's `notAfter`, for `gateway_certificate_expiry_timestamp_seconds`. rustls and
//! webpki check validity but do not expose it; this walks the few DER headers in front of it
//! (RFC 5280 4.1) rather than pull in a full X.509 parser for one field. The certificate was
//! already parsed and accepted by rustls; anything unexpected here gives `None` (no gauge), never
//! a panic.

/// One DER element at the start of `der`: its tag, its contents and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;

/// `notAfter` of a DER certificate, in seconds since the Unix epoch.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    match tag {
        UTC_TIME => {
            // YYMMDDHHMMSSZ; RFC 5280: YY < 50 is 20YY.
            let yy: i64 = digits(text.get(0..2)?)?;
            let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
            timestamp(year, text.get(2..)?)
        }
        GENERALIZED_TIME => timestamp(digits(text.get(0..4)?)?, text.get(4..)?),
        _ => None,
    }
}

fn digits(s: &str) -> Option<i64> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// `MMDDHHMMSSZ` of `year` as Unix seconds.
fn timestamp(year: i64, rest: &str) -> Option<i64> {
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(y: i32, m: u8, d: u8) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(y, m, d);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_utc_time_and_generalized_time() {
        // 2031-05-17: UTCTime (before 2050).
        assert_eq!(not_after(&cert_until(2031, 5, 17)), Some(1_936_742_400));
        // 2049-12-31 is the last UTCTime year; 2050 on is GeneralizedTime.
        assert_eq!(not_after(&cert_until(2049, 12, 31)), Some(2_524_521_600));
        assert_eq!(not_after(&cert_until(2050, 1, 1)), Some(2_524_608_000));
        assert_eq!(not_after(&cert_until(2024, 2, 29)), Some(1_709_164_800));
    }

    #[test]
    fn anything_else_is_none_not_a_panic() {
        let good = cert_until(2031, 5, 17);
        for n in 0..good.len() {
            let _ = not_after(&good[..n]);
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(not_after(b"\x02\x01\x00"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
