//! Where flow records go: JSON lines to stdout or to a file (appended).

use std::io::Write;
use std::path::PathBuf;

use super::FlowRecord;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("flow log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub enum FlowSink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        path: PathBuf,
        writer: std::io::BufWriter<std::fs::File>,
    },
}

impl FlowSink {
    /// `-` is stdout; anything else a file, created or appended to.
    pub fn open(target: &str) -> Result<Self, SinkError> {
        if target == "-" {
            return Ok(FlowSink::Stdout(std::io::BufWriter::new(std::io::stdout())));
        }
        let path = PathBuf::from(target);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SinkError::Io {
                path: target.to_owned(),
                source,
            })?;
        Ok(FlowSink::File {
            path,
            writer: std::io::BufWriter::new(file),
        })
    }

    fn name(&self) -> String {
        match self {
            FlowSink::Stdout(_) => "-".into(),
            FlowSink::File { path, .. } => path.display().to_string(),
        }
    }

    pub fn write(&mut self, record: &FlowRecord) -> Result<(), SinkError> {
        let name = self.name();
        let writer: &mut dyn Write = match self {
            FlowSink::Stdout(writer) => writer,
            FlowSink::File { writer, .. } => writer,
        };
        let result = serde_json::to_writer(&mut *writer, record)
            .map_err(std::io::Error::from)
            .and_then(|()| writer.write_all(b"\n"));
        result.map_err(|source| SinkError::Io { path: name, source })
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        let name = self.name();
        let result = match self {
            FlowSink::Stdout(writer) => writer.flush(),
            FlowSink::File { writer, .. } => writer.flush(),
        };
        result.map_err(|source| SinkError::Io { path: name, source })
    }
}
