//! The file sink: JSON lines (or OCSF, CEF) appended to a file that rotates at a size,
//! `flows.jsonl` -> `flows.jsonl.1` -> ... -> `flows.jsonl.KEEP`.

use std::io::Write;
use std::path::PathBuf;

use super::spec::SinkError;

/// Bytes buffered by stdout and file sinks between writes (about a hundred records).
pub(super) const WRITE_BUFFER: usize = 64 << 10;

/// A file that rotates at a size: `flows.jsonl` -> `flows.jsonl.1` -> ... `.keep`.
pub(super) struct RotatingFile {
    path: PathBuf,
    writer: std::io::BufWriter<std::fs::File>,
    size: u64,
    rotate_bytes: Option<u64>,
    keep: usize,
}

impl RotatingFile {
    pub(super) fn open(
        path: PathBuf,
        rotate_bytes: Option<u64>,
        keep: usize,
    ) -> Result<Self, SinkError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SinkError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        Ok(Self {
            path,
            writer: std::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            size,
            rotate_bytes,
            keep,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.writer.flush()?;
        let numbered = |index: usize| PathBuf::from(format!("{}.{index}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for index in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(index), numbered(index + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.writer = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        self.size = 0;
        Ok(())
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }

    /// Writes `line` and a newline; `line` is the caller's buffer and gets the newline
    /// appended, so the two go out in one write.
    pub(super) fn write_line(&mut self, line: &mut Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        let size = line.len() as u64;
        if let Some(limit) = self.rotate_bytes
            && self.size > 0
            && self.size + size > limit
        {
            self.rotate()?;
        }
        self.writer.write_all(line)?;
        self.size += size;
        Ok(())
    }
}
