//! The DICOM transfer syntaxes the reader knows, in one table: each one's UID, name and how
//! its data set and pixel data are stored (what the walker, the file-size check, the pixel
//! decoders and the error messages ask).

/// How a transfer syntax stores the data set and its pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Coding {
    /// Uncompressed pixels in the data set: implicit or explicit VR, little or big endian.
    Native { explicit: bool, big_endian: bool },
    /// The data set after the file meta deflated (explicit VR little endian inside); its
    /// pixels expand at most 1032 times.
    Deflated,
    /// Encapsulated RLE Lossless frames (PackBits segments).
    Rle,
    /// Encapsulated JPEG frames: baseline, extended, lossless (process 14) and lossless SV1.
    Jpeg,
    /// Encapsulated frames of a coding not decoded here (JPEG-LS, JPEG 2000, JPEG XL).
    Unsupported,
}

/// One transfer syntax.
pub(super) struct Syntax {
    pub uid: &'static str,
    pub name: &'static str,
    pub coding: Coding,
}

const fn ts(uid: &'static str, name: &'static str, coding: Coding) -> Syntax {
    Syntax { uid, name, coding }
}

const LE: Coding = Coding::Native {
    explicit: true,
    big_endian: false,
};

/// Every transfer syntax the reader names (standard's part 6, table A-1).
const SYNTAXES: [Syntax; 21] = [
    ts(
        "1.2.840.10008.1.2",
        "Implicit VR Little Endian",
        Coding::Native {
            explicit: false,
            big_endian: false,
        },
    ),
    ts("1.2.840.10008.1.2.1", "Explicit VR Little Endian", LE),
    ts(
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
        Coding::Deflated,
    ),
    ts(
        "1.2.840.10008.1.2.2",
        "Explicit VR Big Endian",
        Coding::Native {
            explicit: true,
            big_endian: true,
        },
    ),
    ts("1.2.840.10008.1.2.5", "RLE Lossless", Coding::Rle),
    ts("1.2.840.10008.1.2.4.50", "JPEG Baseline", Coding::Jpeg),
    ts("1.2.840.10008.1.2.4.51", "JPEG Extended", Coding::Jpeg),
    ts("1.2.840.10008.1.2.4.57", "JPEG Lossless", Coding::Jpeg),
    ts("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", Coding::Jpeg),
    ts(
        "1.2.840.10008.1.2.4.80",
        "JPEG-LS Lossless",
        Coding::Unsupported,
    ),
    ts(
        "1.2.840.10008.1.2.4.81",
        "JPEG-LS Near-Lossless",
        Coding::Unsupported,
    ),
    ts(
        "1.2.840.10008.1.2.4.90",
        "JPEG 2000 Lossless",
        Coding::Unsupported,
    ),
    ts("1.2.840.10008.1.2.4.91", "JPEG 2000", Coding::Unsupported),
    ts(
        "1.2.840.10008.1.2.4.92",
        "JPEG 2000 Part 2",
        Coding::Unsupported,
    ),
    ts(
        "1.2.840.10008.1.2.4.93",
        "JPEG 2000 Part 2",
        Coding::Unsupported,
    ),
    ts(
        "1.2.840.10008.1.2.4.201",
        "High-Throughput JPEG 2000",
        Coding::Unsupported,
    ),
    ts(
        "1.2.840.10008.1.2.4.202",
        "High-Throughput JPEG 2000",
        Coding::Unsupported,
    ),
    ts(
        "1.2.840.10008.1.2.4.203",
        "High-Throughput JPEG 2000",
        Coding::Unsupported,
    ),
    ts("1.2.840.10008.1.2.4.110", "JPEG XL", Coding::Unsupported),
    ts("1.2.840.10008.1.2.4.111", "JPEG XL", Coding::Unsupported),
    ts("1.2.840.10008.1.2.4.112", "JPEG XL", Coding::Unsupported),
];

/// The transfer syntax of `uid`, if the reader knows it.
pub(super) fn syntax(uid: &str) -> Option<&'static Syntax> {
    SYNTAXES.iter().find(|s| s.uid == uid)
}

/// How `uid` stores its data: unknown syntaxes are read as explicit VR little endian
/// (what every encapsulated syntax uses) and their pixels are not decoded.
pub(super) fn coding(uid: &str) -> Option<Coding> {
    syntax(uid).map(|s| s.coding)
}

/// The name of a transfer syntax and whether its pixel data can be decoded here.
pub(super) fn transfer_syntax_name(uid: &str) -> (&'static str, bool) {
    syntax(uid).map_or(("unknown", false), |s| {
        (s.name, s.coding != Coding::Unsupported)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uid_is_listed_once_and_named() {
        for (n, s) in SYNTAXES.iter().enumerate() {
            assert!(
                SYNTAXES[n + 1..].iter().all(|t| t.uid != s.uid),
                "{} twice",
                s.uid
            );
            assert!(!s.name.is_empty());
        }
        assert_eq!(
            transfer_syntax_name("1.2.840.10008.1.2.5"),
            ("RLE Lossless", true)
        );
        assert_eq!(
            transfer_syntax_name("1.2.840.10008.1.2.4.90"),
            ("JPEG 2000 Lossless", false)
        );
        assert_eq!(transfer_syntax_name("1.2.3"), ("unknown", false));
        assert_eq!(coding("1.2.840.10008.1.2.1.99"), Some(Coding::Deflated));
    }
}
