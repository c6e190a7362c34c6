//! Daemon pid files (`DIR/<daemon>/pid`), which `shoal` reads to find and name running daemons.

use std::io;
use std::path::Path;

/// Writes `pid` to `path` so that a reader sees the old content or the new, never an empty
/// file: `shoal mount` picks the first client name whose pid file names no running daemon,
/// and a torn read would hand a live mount's name to a second one.
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, pid.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_is_replaced_whole_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("shoal-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pid");
        write(&p, 41).unwrap();
        write(&p, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "4242");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(write(&dir.join("missing/pid"), 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
