//! The few DER structures key loading needs (SPKI, PKCS#8 and PKCS#1 headers,
//! SEC1 curve parameters), read with bounds checks and written canonically.
//! Cryptography itself stays in aws-lc-rs; this only locates fields.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_CONTEXT_0: u8 = 0xA0;

/// DER content octets of well-known object identifiers.
pub(crate) mod oid {
    /// rsaEncryption, 1.2.840.113549.1.1.1
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// id-ecPublicKey, 1.2.840.10045.2.1
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// prime256v1 / P-256, 1.2.840.10045.3.1.7
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// secp384r1 / P-384, 1.3.132.0.34
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// id-Ed25519, 1.3.101.112
    pub const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
}

/// A forward-only reader over DER bytes. Every read is bounds-checked.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// Reads one TLV and returns its tag and content.
    pub(crate) fn any(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (len_bytes, rest) = rest.split_at(n);
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            // DER: long form only when needed, no leading zero octets.
            if len < 0x80 || len_bytes[0] == 0 {
                return None;
            }
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.input = rest;
        Some((tag, content))
    }

    /// Reads one TLV that must carry `tag`.
    pub(crate) fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.any()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }

    /// Peeks at the next tag.
    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.input.first().copied()
    }

    /// Reads a positive INTEGER and returns its magnitude without leading zeros.
    pub(crate) fn positive_integer(&mut self) -> Option<&'a [u8]> {
        let content = self.expect(TAG_INTEGER)?;
        let (&first, _) = content.split_first()?;
        if first & 0x80 != 0 {
            return None;
        }
        Some(strip_leading_zeros(content))
    }
}

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The algorithm OID, its parameter OID (if any) and the key bytes of a
/// SubjectPublicKeyInfo.
pub(crate) struct Spki<'a> {
    pub algorithm: &'a [u8],
    pub parameter: Option<&'a [u8]>,
    pub key: &'a [u8],
}

fn algorithm_identifier(seq: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut r = Reader::new(seq);
    let algorithm = r.expect(TAG_OID)?;
    let parameter = match r.any() {
        None => None,
        Some((TAG_OID, p)) => Some(p),
        Some((TAG_NULL, [])) => None,
        Some(_) => return None,
    };
    if !r.is_empty() {
        return None;
    }
    Some((algorithm, parameter))
}

pub(crate) fn parse_spki(der: &[u8]) -> Option<Spki<'_>> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(TAG_SEQUENCE)?;
    if !outer.is_empty() {
        return None;
    }
    let mut r = Reader::new(seq);
    let (algorithm, parameter) = algorithm_identifier(r.expect(TAG_SEQUENCE)?)?;
    let bits = r.expect(TAG_BIT_STRING)?;
    if !r.is_empty() {
        return None;
    }
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    Some(Spki {
        algorithm,
        parameter,
        key,
    })
}

/// The algorithm OID and parameter OID of a PKCS#8 PrivateKeyInfo.
pub(crate) fn pkcs8_algorithm(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(TAG_SEQUENCE)?;
    let mut r = Reader::new(seq);
    r.expect(TAG_INTEGER)?;
    algorithm_identifier(r.expect(TAG_SEQUENCE)?)
}

/// The curve OID of a SEC1 ECPrivateKey, if it names one.
pub(crate) fn sec1_curve(der: &[u8]) -> Option<&[u8]> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(TAG_SEQUENCE)?;
    let mut r = Reader::new(seq);
    r.expect(TAG_INTEGER)?;
    r.expect(TAG_OCTET_STRING)?;
    if r.peek_tag()? != TAG_CONTEXT_0 {
        return None;
    }
    let params = r.expect(TAG_CONTEXT_0)?;
    Reader::new(params).expect(TAG_OID)
}

/// The modulus and public exponent of a PKCS#1 RSAPublicKey.
pub(crate) fn rsa_public_key(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(TAG_SEQUENCE)?;
    if !outer.is_empty() {
        return None;
    }
    let mut r = Reader::new(seq);
    let n = r.positive_integer()?;
    let e = r.positive_integer()?;
    if !r.is_empty() {
        return None;
    }
    Some((n, e))
}

/// The modulus of a PKCS#1 RSAPrivateKey.
pub(crate) fn rsa_private_key_modulus(der: &[u8]) -> Option<&[u8]> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(TAG_SEQUENCE)?;
    let mut r = Reader::new(seq);
    r.expect(TAG_INTEGER)?;
    r.positive_integer()
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

fn push_unsigned(out: &mut Vec<u8>, magnitude: &[u8]) {
    let m = strip_leading_zeros(magnitude);
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(m);
    push_tlv(out, TAG_INTEGER, &content);
}

/// A SEQUENCE of unsigned INTEGERs (PKCS#1 RSAPublicKey and RSAPrivateKey).
pub(crate) fn sequence_of_unsigned(values: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for v in values {
        push_unsigned(&mut body, v);
    }
    let mut out = Vec::with_capacity(body.len() + 6);
    push_tlv(&mut out, TAG_SEQUENCE, &body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_through_rsa_public_key() {
        let n = [0xC5u8; 256];
        let e = [0x01u8, 0x00, 0x01];
        let der = sequence_of_unsigned(&[&n, &e]);
        let (n2, e2) = rsa_public_key(&der).expect("parses");
        assert_eq!(n2, n);
        assert_eq!(e2, e);
    }

    #[test]
    fn truncated_and_overlong_lengths_are_rejected() {
        let der = sequence_of_unsigned(&[&[0x7f; 300], &[3]]);
        for cut in 0..der.len() {
            assert!(rsa_public_key(&der[..cut]).is_none(), "cut at {cut}");
        }
        // Non-minimal long-form length.
        assert!(Reader::new(&[0x02, 0x81, 0x01, 0x05]).any().is_none());
        // Length larger than the input.
        assert!(
            Reader::new(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff])
                .any()
                .is_none()
        );
    }
}
