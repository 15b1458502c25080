//! Parsing one file with dicom-rs, after a walk over its element headers that checks
//! every claimed value length against the bytes there are (so that a few corrupt bytes
//! cannot make the parser allocate gigabytes).

use std::io::Read;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use super::syntax::{Coding, coding};
use crate::{Error, Result};

/// The messages of an error and its sources, joined.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// Parse a file; `open` gives a reader positioned at its start (it is called twice:
/// the element lengths are checked first, see [`check_lengths`]); `header_only` stops
/// before the pixel data.
pub(crate) fn parse<R: Read>(
    mut open: impl FnMut() -> Result<R>,
    size: Option<u64>,
    name: &str,
    header_only: bool,
) -> Result<Option<DefaultDicomObject>> {
    let mut r = open()?;
    let mut head = [0u8; 132];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    let head = &head[..got];
    let corrupt = |m: String| {
        Error::Dicom(format!(
            "{name}: cannot be read as DICOM (truncated or corrupt?): {m}"
        ))
    };
    let skip = if head.get(128..132) == Some(b"DICM") {
        132
    } else if head.starts_with(b"DICM") {
        4
    } else {
        return Ok(None);
    };
    // The parser allocates a value's claimed length before reading it: a few bytes could
    // make it zero 4 GiB. Walk the element headers first, without allocating.
    let after_dicm = std::io::Cursor::new(head[skip..].to_vec()).chain(r);
    let rest_size = size.map(|s| s.saturating_sub(skip as u64));
    check_lengths(after_dicm, rest_size, header_only).map_err(corrupt)?;
    let mut r = open()?;
    std::io::copy(&mut (&mut r).take(skip as u64), &mut std::io::sink())?;
    let rest = std::io::Cursor::new(b"DICM".to_vec()).chain(r);
    let mut opts = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    if header_only {
        opts = opts.read_until(tags::PIXEL_DATA);
    }
    opts.from_reader(rest)
        .map(Some)
        .map_err(|e| corrupt(chain(&e)))
}

/// A reader that counts the bytes read, and knows the stream's length when it can.
struct Counted<R> {
    inner: R,
    pos: u64,
    len: Option<u64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Counted<R> {
    /// Exactly `N` bytes, or `None` at the end of the stream (a cut header is left to
    /// the parser to report).
    fn take_array<const N: usize>(&mut self) -> std::result::Result<Option<[u8; N]>, String> {
        let mut b = [0u8; N];
        let mut got = 0;
        while got < N {
            match self.read(&mut b[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Some(b))
    }

    /// An error if a length read at this point runs past the end of the stream (when
    /// its length is known), in whatever context the parser reads it.
    fn fits(&self, tag: (u16, u16), len: u32) -> std::result::Result<(), String> {
        match self.len {
            Some(total) if len != u32::MAX && self.pos + len as u64 > total => Err(format!(
                "element ({:04X},{:04X}) claims a value of {len} bytes but the file ends {} bytes later",
                tag.0,
                tag.1,
                total.saturating_sub(self.pos)
            )),
            _ => Ok(()),
        }
    }

    /// Skip a value of `len` bytes by reading it (no allocation): an error if the
    /// stream ends first.
    fn skip(&mut self, tag: (u16, u16), len: u32) -> std::result::Result<(), String> {
        let n = std::io::copy(&mut (&mut *self).take(len as u64), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if n < len as u64 {
            return Err(format!(
                "element ({:04X},{:04X}) claims a value of {len} bytes but the file ends {n} bytes later",
                tag.0, tag.1
            ));
        }
        Ok(())
    }
}

/// Whether an explicit-VR header has a 4-byte length: all VRs but those PS3.5 7.1.2
/// lists with a 2-byte length (an unknown VR is read as UN, as dicom-rs does).
fn long_vr(vr: &[u8; 2]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Check that no element of a DICOM stream (positioned after "DICM") claims a value
/// longer than the rest of the stream, walking its element headers (file meta group,
/// then the data set in its transfer syntax: implicit or explicit VR, little or big
/// endian, deflated; into sequences and items; over pixel fragments) and skipping
/// values by reading them, so nothing is allocated from a claimed length. With
/// `header_only`, stops at the top-level PixelData. A cut header is left to the parser.
pub(crate) fn check_lengths(
    r: impl Read,
    len: Option<u64>,
    header_only: bool,
) -> std::result::Result<(), String> {
    let mut r = Counted {
        inner: r,
        pos: 0,
        len,
    };
    // File meta group: explicit VR little endian, as long as (0002,0000) says (as
    // dicom-object reads it).
    let Some(h) = r.take_array::<8>()? else {
        return Ok(());
    };
    let bad_meta = || "the file meta group does not start with its length (0002,0000)".to_string();
    if h[..4] != [0x02, 0x00, 0x00, 0x00] {
        return Err(bad_meta());
    }
    let len = if long_vr(&[h[4], h[5]]) {
        r.take_array::<4>()?.map(u32::from_le_bytes)
    } else {
        Some(u16::from_le_bytes([h[6], h[7]]) as u32)
    };
    let (Some(4), Some(v)) = (len, r.take_array::<4>()?) else {
        return Err(bad_meta());
    };
    let group_end = r.pos + u32::from_le_bytes(v) as u64;
    let mut ts = String::new();
    while r.pos < group_end {
        let Some(h) = r.take_array::<8>()? else {
            return Ok(());
        };
        let (g, e) = (
            u16::from_le_bytes([h[0], h[1]]),
            u16::from_le_bytes([h[2], h[3]]),
        );
        let vr = [h[4], h[5]];
        let len = if long_vr(&vr) {
            let Some(l) = r.take_array::<4>()? else {
                return Ok(());
            };
            u32::from_le_bytes(l)
        } else {
            u16::from_le_bytes([h[6], h[7]]) as u32
        };
        if len == u32::MAX {
            return Err(format!(
                "file meta element ({g:04X},{e:04X}) has an undefined length"
            ));
        }
        r.fits((g, e), len)?;
        if (g, e) == (0x0002, 0x0010) && len <= 128 {
            let mut v = vec![0u8; len as usize];
            if r.read_exact(&mut v).is_err() {
                return Ok(());
            }
            ts = String::from_utf8_lossy(&v)
                .trim_end_matches(['\0', ' '])
                .to_string();
        } else {
            r.skip((g, e), len)?;
        }
    }
    let rest_len = r.len.map(|l| l.saturating_sub(r.pos));
    let rest = r.inner;
    match coding(&ts) {
        Some(Coding::Native {
            explicit,
            big_endian,
        }) => walk_data_set(rest, rest_len, explicit, big_endian, header_only),
        Some(Coding::Deflated) => walk_data_set(
            flate2::read::DeflateDecoder::new(rest),
            None,
            true,
            false,
            header_only,
        ),
        _ => walk_data_set(rest, rest_len, true, false, header_only),
    }
}

/// A container open during the walk.
#[derive(PartialEq)]
enum Open {
    Sequence,
    Item,
    Fragments,
}

/// What a step of the walk read; `None` at the end of the stream (a cut header is left
/// to the parser to report).
type Step<T> = std::result::Result<Option<T>, String>;

/// The state of a walk over a data set's element headers.
struct Walker<R> {
    r: Counted<R>,
    explicit: bool,
    big_endian: bool,
    /// Open containers, each with its end when its length is defined.
    open: Vec<(Open, Option<u64>)>,
}

/// Walk the data set's element headers (see [`check_lengths`]).
fn walk_data_set(
    r: impl Read,
    len: Option<u64>,
    explicit: bool,
    big_endian: bool,
    header_only: bool,
) -> std::result::Result<(), String> {
    let mut w = Walker {
        r: Counted {
            inner: r,
            pos: 0,
            len,
        },
        explicit,
        big_endian,
        open: Vec::new(),
    };
    loop {
        w.close_ended();
        let Some(t) = w.r.take_array::<4>()? else {
            return Ok(());
        };
        let tag = (w.u16_of([t[0], t[1]]), w.u16_of([t[2], t[3]]));
        if tag.0 == 0xFFFE {
            if w.item_or_delimiter(tag)?.is_none() {
                return Ok(());
            }
            continue;
        }
        if header_only && w.open.is_empty() && tag == (0x7FE0, 0x0010) {
            return Ok(());
        }
        let Some((vr, len)) = w.vr_and_length()? else {
            return Ok(());
        };
        // The VR: explicit, else the dictionary's (as the parser takes it).
        let vr = vr.or_else(|| dictionary_vr(tag));
        w.r.fits(tag, len)?;
        check_value_size(tag, vr, len)?;
        w.enter_or_skip(tag, vr, len)?;
    }
}

impl<R: Read> Walker<R> {
    fn u16_of(&self, b: [u8; 2]) -> u16 {
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_of(&self, b: [u8; 4]) -> u32 {
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Close the containers of defined length that end here.
    fn close_ended(&mut self) {
        while self
            .open
            .last()
            .is_some_and(|(_, end)| end.is_some_and(|e| self.r.pos >= e))
        {
            self.open.pop();
        }
    }

    /// An item or a delimiter (group FFFE: no VR, a 4-byte length); `None` at the end
    /// of the stream.
    fn item_or_delimiter(&mut self, tag: (u16, u16)) -> Step<()> {
        let Some(l) = self.r.take_array::<4>()? else {
            return Ok(None);
        };
        let len = self.u32_of(l);
        self.r.fits(tag, len)?;
        if self.open.is_empty() && tag.1 != 0xE00D {
            // Outside any sequence dicom-rs reads an item or a sequence delimiter as an
            // element with a value (an item delimiter it skips).
            if len != u32::MAX {
                self.r.skip(tag, len)?;
            }
            return Ok(Some(()));
        }
        match tag.1 {
            0xE000 if self.open.last().is_some_and(|(k, _)| *k == Open::Fragments) => {
                if len == u32::MAX {
                    return Err("a pixel data fragment of undefined length".into());
                }
                self.r.skip(tag, len)?;
            }
            0xE000 => {
                let end = (len != u32::MAX).then(|| self.r.pos + len as u64);
                self.open.push((Open::Item, end));
            }
            0xE00D => {
                while let Some((k, _)) = self.open.pop() {
                    if k == Open::Item {
                        break;
                    }
                }
            }
            0xE0DD => {
                while let Some((k, _)) = self.open.pop() {
                    if k != Open::Item {
                        break;
                    }
                }
            }
            _ => self.r.skip(tag, len)?,
        }
        Ok(Some(()))
    }

    /// The explicit VR (if the syntax has one) and the value length of an element;
    /// `None` at the end of the stream.
    fn vr_and_length(&mut self) -> Step<(Option<[u8; 2]>, u32)> {
        if !self.explicit {
            let Some(l) = self.r.take_array::<4>()? else {
                return Ok(None);
            };
            return Ok(Some((None, self.u32_of(l))));
        }
        let Some(v) = self.r.take_array::<2>()? else {
            return Ok(None);
        };
        if long_vr(&v) {
            let Some(l) = self.r.take_array::<6>()? else {
                return Ok(None);
            };
            Ok(Some((Some(v), self.u32_of([l[2], l[3], l[4], l[5]]))))
        } else {
            let Some(l) = self.r.take_array::<2>()? else {
                return Ok(None);
            };
            Ok(Some((Some(v), self.u16_of(l) as u32)))
        }
    }

    /// Open a sequence (or undefined-length pixel data), else skip the value.
    fn enter_or_skip(
        &mut self,
        tag: (u16, u16),
        vr: Option<[u8; 2]>,
        len: u32,
    ) -> std::result::Result<(), String> {
        if len == u32::MAX {
            // As dicom-rs: undefined-length PixelData holds fragments, any other
            // undefined-length element is a sequence.
            let kind = if tag == (0x7FE0, 0x0010) {
                Open::Fragments
            } else {
                Open::Sequence
            };
            self.open.push((kind, None));
        } else if vr == Some(*b"SQ") {
            self.open
                .push((Open::Sequence, Some(self.r.pos + len as u64)));
        } else {
            self.r.skip(tag, len)?;
        }
        Ok(())
    }
}

/// The VR the standard dictionary gives a tag (`US` for an `xs` one).
fn dictionary_vr(tag: (u16, u16)) -> Option<[u8; 2]> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    let dict = dicom_dictionary_std::StandardDataDictionary;
    match dict.by_tag(Tag(tag.0, tag.1)).map(|e| e.vr()) {
        Some(VirtualVr::Exact(v)) => Some(*v.to_string().as_bytes().first_chunk()?),
        Some(VirtualVr::Xs) => Some(*b"US"),
        _ => None,
    }
}

/// dicom-rs reads whole numbers of binary values but steps over the whole length: a
/// length that is not a multiple of the value's size would shift the rest.
fn check_value_size(
    tag: (u16, u16),
    vr: Option<[u8; 2]>,
    len: u32,
) -> std::result::Result<(), String> {
    let size = match vr.as_ref() {
        Some(b"OW" | b"SS" | b"US") => 2,
        Some(b"AT" | b"FL" | b"OF" | b"OL" | b"SL" | b"UL") => 4,
        Some(b"FD" | b"OD" | b"OV" | b"SV" | b"UV") => 8,
        _ => 1,
    };
    if len != u32::MAX && !len.is_multiple_of(size) {
        return Err(format!(
            "element ({:04X},{:04X}) of VR {} has a length of {len} bytes, not a multiple of {size}",
            tag.0,
            tag.1,
            String::from_utf8_lossy(vr.as_ref().map(|v| &v[..]).unwrap_or(b"??"))
        ));
    }
    Ok(())
}
