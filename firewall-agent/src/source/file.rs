//! The standalone source: one multi-document YAML file, re-read when its content changes.
//! Polling the content (not inotify) survives editors that replace the file, ConfigMap
//! symlink swaps and bind mounts alike; at a few reads per second it costs nothing.

use std::path::{Path, PathBuf};

/// What the last look at the file found.
#[derive(Debug)]
pub enum FileState {
    Unchanged,
    Changed(String),
    /// The file cannot be read (missing, permissions): keep the last good policy.
    Unreadable(String),
}

pub struct FileSource {
    path: PathBuf,
    last_content: Option<String>,
    last_error: Option<String>,
}

impl FileSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            last_content: None,
            last_error: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file and says whether it changed since the last call.
    pub fn poll(&mut self) -> FileState {
        match std::fs::read_to_string(&self.path) {
            Ok(content) => {
                self.last_error = None;
                if self.last_content.as_deref() == Some(content.as_str()) {
                    FileState::Unchanged
                } else {
                    self.last_content = Some(content.clone());
                    FileState::Changed(content)
                }
            }
            Err(error) => {
                let message = format!("cannot read {}: {error}", self.path.display());
                if self.last_error.as_deref() == Some(message.as_str()) {
                    FileState::Unchanged
                } else {
                    self.last_error = Some(message.clone());
                    FileState::Unreadable(message)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_changes_once_and_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        let mut source = FileSource::new(&path);
        assert!(matches!(source.poll(), FileState::Unreadable(_)));
        assert!(matches!(source.poll(), FileState::Unchanged));
        std::fs::write(&path, "a: 1\n").unwrap();
        assert!(matches!(source.poll(), FileState::Changed(content) if content == "a: 1\n"));
        assert!(matches!(source.poll(), FileState::Unchanged));
        std::fs::write(&path, "a: 2\n").unwrap();
        assert!(matches!(source.poll(), FileState::Changed(_)));
    }
}
