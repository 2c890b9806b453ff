//! Batched map writes: many entries in one `BPF_MAP_UPDATE_BATCH` syscall where the map
//! type has it, one by one where it does not.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use super::error::{DatapathError, full_or, map_full};

/// `bpf_attr` as BPF_MAP_*_BATCH reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// One `BPF_MAP_UPDATE_BATCH`: writes `keys[i] -> values[i]`. Returns how many entries
/// the kernel wrote, and the error that stopped it, if any.
fn update_batch<K: Copy, V: Copy>(
    fd: RawFd,
    keys: &[K],
    values: &[V],
) -> (usize, Option<std::io::Error>) {
    debug_assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return (0, None);
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..Default::default()
    };
    // SAFETY: `attr` points at `count` keys and values that stay alive and unchanged for
    // the call; the kernel reads them and writes only `attr.count`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if result == 0 {
        (keys.len(), None)
    } else {
        let error = std::io::Error::last_os_error();
        ((attr.count as usize).min(keys.len()), Some(error))
    }
}

/// Errors that mean "this map type has no batch operations" rather than a failed write.
fn batch_unsupported(error: &std::io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal code the bpf() syscall returns for missing ops.
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(524)
    )
}

/// Writes every `(key, value)` of `writes`: in one batch when the map takes it, else one
/// by one through `insert`. `wrote(i)` is called for every entry the kernel took, before
/// any error is returned, so the caller's shadow stays true to the kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_all<K: Copy, V: Copy>(
    fd: RawFd,
    no_batch: &mut bool,
    name: &'static str,
    capacity: usize,
    keys: &[K],
    values: &[V],
    mut insert: impl FnMut(&K, &V) -> Result<(), aya::maps::MapError>,
    mut wrote: impl FnMut(usize),
) -> Result<(), DatapathError> {
    let mut done = 0;
    if !*no_batch && keys.len() > 1 {
        let (written, error) = update_batch(fd, keys, values);
        (0..written).for_each(&mut wrote);
        done = written;
        match error {
            None => return Ok(()),
            Some(error) if map_full(&error) => {
                return Err(DatapathError::MapFull {
                    name,
                    entries: capacity,
                });
            }
            Some(error) if written == 0 && batch_unsupported(&error) => {
                tracing::debug!(map = name, %error, "no batched updates; writing one by one");
                *no_batch = true;
            }
            // Anything else: the one-by-one path below reports it for the entry at fault.
            Some(_) => {}
        }
    }
    for index in done..keys.len() {
        insert(&keys[index], &values[index]).map_err(full_or(name, capacity))?;
        wrote(index);
    }
    Ok(())
}

pub(super) fn raw_fd(map: &aya::maps::MapData) -> RawFd {
    map.fd().as_fd().as_raw_fd()
}
