//! Where a series' files come from: in-memory `(name, bytes)` pairs (the page) or the
//! files of a folder tree (native).

use std::borrow::Cow;
use std::io::Read;

#[cfg(not(target_arch = "wasm32"))]
use crate::Error;
use crate::Result;

/// Where the files come from: in-memory bytes or paths.
pub(super) trait Source {
    fn count(&self) -> usize;
    fn name(&self, i: usize) -> String;
    /// The whole file.
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>>;
    /// A reader over the file from its start (for header-only parsing).
    fn reader(&self, i: usize) -> Result<Box<dyn Read + '_>>;
    /// The file's size in bytes.
    fn size(&self, i: usize) -> Result<u64>;
}

pub(super) struct BytesSource<'a, N, B>(pub(super) &'a [(N, B)]);

impl<N: AsRef<str>, B: AsRef<[u8]>> Source for BytesSource<'_, N, B> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn name(&self, i: usize) -> String {
        self.0[i].0.as_ref().to_string()
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.0[i].1.as_ref()))
    }
    fn reader(&self, i: usize) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0[i].1.as_ref()))
    }
    fn size(&self, i: usize) -> Result<u64> {
        Ok(self.0[i].1.as_ref().len() as u64)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(super) struct PathSource {
    pub(super) files: Vec<std::path::PathBuf>,
}

#[cfg(not(target_arch = "wasm32"))]
impl PathSource {
    /// Deepest folder level searched below the folder given.
    const MAX_DEPTH: usize = 6;
    /// Most files considered in one folder tree.
    const MAX_FILES: usize = 200_000;

    pub(super) fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let mut files = Vec::new();
        Self::walk(dir, 0, &mut files)?;
        files.sort();
        Ok(Self { files })
    }

    fn walk(dir: &std::path::Path, depth: usize, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read folder {}: {e}", dir.display()),
            ))
        })?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = std::fs::metadata(&path)?;
            if kind.is_dir() {
                if depth < Self::MAX_DEPTH {
                    Self::walk(&path, depth + 1, out)?;
                }
            } else if kind.is_file() {
                if out.len() >= Self::MAX_FILES {
                    return Err(Error::Dicom(format!(
                        "{}: more than {} files; give the folder of one series",
                        dir.display(),
                        Self::MAX_FILES
                    )));
                }
                out.push(path);
            }
        }
        Ok(())
    }

    fn open(&self, i: usize) -> Result<std::fs::File> {
        let p = &self.files[i];
        std::fs::File::open(p).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", p.display()),
            ))
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Source for PathSource {
    fn count(&self) -> usize {
        self.files.len()
    }
    fn name(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let mut v = Vec::new();
        self.open(i)?.read_to_end(&mut v)?;
        Ok(Cow::Owned(v))
    }
    fn reader(&self, i: usize) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::io::BufReader::new(self.open(i)?)))
    }
    fn size(&self, i: usize) -> Result<u64> {
        Ok(self.open(i)?.metadata()?.len())
    }
}
