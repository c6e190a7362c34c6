//! `shoal-fsop [--as UID:GID[:G1,G2...]] [--umask OCT] OP ARGS...`: performs one filesystem
//! system call and
//! prints `ok` (and, for `stat`, the result) or the errno's name. The POSIX conformance tests
//! run it as other users, so the credentials are switched here (groups, then gid, then uid)
//! before the call, in a process of its own.
//!
//! Ops: `stat P` (prints `mode=OCT uid= gid= nlink= size=`), `chmod P OCT`, `chown P UID GID`
//! (-1 keeps), `create P OCT` (O_CREAT|O_EXCL), `mkdir P OCT`, `write P TEXT` (O_WRONLY|O_APPEND),
//! `read P`, `truncate P LEN`, `overwrite P` (open O_WRONLY|O_TRUNC), `fallocate P LEN` (from
//! 0), `unlink P`, `rmdir P`, `rename A B`, `link A B`, `symlink T P`,
//! `access P MODE` (r, w, x letters or `f`; real ids), `eaccess P MODE` (faccessat with
//! AT_EACCESS: effective ids), `euid UID:GID OP...` (switch only the effective ids, then run
//! OP), `utime-now P`, and POSIX ACLs as the
//! `system.posix_acl_access`/`_default` xattrs: `setacl P access|default ACL`,
//! `getacl P access|default`, `rmacl P access|default`, where ACL is written
//! `u::rw-,u:1000:r--,g::r--,g:50:rwx,m::rw-,o::---` (entries in the kernel's order); and
//! `setxattr P NAME TEXT`, `getxattr P NAME`, `listxattr P` (names sorted, comma-separated),
//! none of which follow a final symlink. Locks: see `lock_op`.

use std::ffi::CString;
use std::process::ExitCode;

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EDEADLK => "EDEADLK",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::EBUSY => "EBUSY",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        other => return format!("E{other}"),
    };
    name.to_string()
}

fn last_errno() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Opens `p` with `flags`, runs `f` on the descriptor (a negative result is its errno), and
/// closes it: `ok` or the first errno.
fn on_open(
    p: &str,
    flags: libc::c_int,
    f: impl FnOnce(libc::c_int) -> libc::c_long,
) -> Result<Result<String, String>, String> {
    // SAFETY: open and close of a NUL-terminated path that lives across the call.
    let fd = unsafe { libc::open(cstr(p)?.as_ptr(), flags) };
    if fd < 0 {
        return Ok(Err(last_errno()));
    }
    let r = if f(fd) < 0 {
        Err(last_errno())
    } else {
        Ok(String::new())
    };
    let closed = unsafe { libc::close(fd) };
    Ok(r.and(if closed < 0 {
        Err(last_errno())
    } else {
        Ok(String::new())
    }))
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("NUL byte in {s:?}"))
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn octal(s: &str) -> Result<libc::mode_t, String> {
    libc::mode_t::from_str_radix(s, 8).map_err(|_| format!("not an octal mode: {s:?}"))
}

/// The xattr of `access` or `default`.
fn acl_name(which: &str) -> Result<CString, String> {
    match which {
        "access" => cstr("system.posix_acl_access"),
        "default" => cstr("system.posix_acl_default"),
        _ => Err(format!("want access or default, not {which:?}")),
    }
}

const ACL_TAGS: [(&str, u16); 4] = [("u", 0x01), ("g", 0x04), ("m", 0x10), ("o", 0x20)];

/// `u::rw-,u:1000:r--,...` as the kernel's xattr value (version 2, then tag/perm/id entries).
fn acl_value(text: &str) -> Result<Vec<u8>, String> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for entry in text.split(',') {
        let parts: Vec<&str> = entry.split(':').collect();
        let [tag, id, perm] = parts.as_slice() else {
            return Err(format!("bad ACL entry {entry:?}"));
        };
        let base = ACL_TAGS
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("bad ACL tag in {entry:?}"))?;
        // A named user (0x02) or group (0x08) entry carries an id.
        let (tag, id) = if id.is_empty() {
            (base, u32::MAX)
        } else {
            (base << 1, num(id)?)
        };
        let mut bits = 0u16;
        for (i, c) in perm.chars().enumerate() {
            match (i, c) {
                (0, 'r') => bits |= 4,
                (1, 'w') => bits |= 2,
                (2, 'x') => bits |= 1,
                (_, '-') => {}
                _ => return Err(format!("bad permissions in {entry:?}")),
            }
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// An xattr value back in the text form of [`acl_value`].
fn acl_text(v: &[u8]) -> String {
    let entries = v.get(4..).unwrap_or_default().chunks_exact(8).map(|c| {
        let tag = u16::from_le_bytes([c[0], c[1]]);
        let bits = u16::from_le_bytes([c[2], c[3]]);
        let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        let (name, id) = match tag {
            0x02 => ("u".to_string(), id.to_string()),
            0x08 => ("g".to_string(), id.to_string()),
            _ => match ACL_TAGS.iter().find(|(_, t)| *t == tag) {
                Some((n, _)) => (n.to_string(), String::new()),
                None => (format!("?{tag:#x}"), id.to_string()),
            },
        };
        let perm: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|&(b, c)| if bits & b != 0 { c } else { '-' })
            .collect();
        format!("{name}:{id}:{perm}")
    });
    entries.collect::<Vec<_>>().join(",")
}

/// access(2) mode letters: r, w, x, or f.
fn access_mode(mode: &str) -> Result<libc::c_int, String> {
    let mut m = 0;
    for c in mode.chars() {
        m |= match c {
            'r' => libc::R_OK,
            'w' => libc::W_OK,
            'x' => libc::X_OK,
            'f' => libc::F_OK,
            _ => return Err(format!("bad access mode {mode:?}")),
        };
    }
    Ok(m)
}

/// Switches to `UID:GID[:G1,G2...]` (supplementary groups default to none).
fn become_user(spec: &str) -> Result<(), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (uid, gid): (libc::uid_t, libc::gid_t) = match parts.as_slice() {
        [u, g] | [u, g, _] => (num(u)?, num(g)?),
        _ => return Err(format!("bad --as {spec:?}: want UID:GID[:G1,G2...]")),
    };
    let groups: Vec<libc::gid_t> = match parts.get(2) {
        Some(list) if !list.is_empty() => list.split(',').map(num).collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    // SAFETY: plain system calls on values owned here; the pointer and length describe
    // `groups`.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", last_errno()));
        }
        if libc::setgid(gid) != 0 {
            return Err(format!("setgid: {}", last_errno()));
        }
        if libc::setuid(uid) != 0 {
            return Err(format!("setuid: {}", last_errno()));
        }
    }
    Ok(())
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// `r`, `w` or `u` as a lock type.
fn lock_type(kind: &str) -> Result<libc::c_short, String> {
    Ok(match kind {
        "r" => libc::F_RDLCK,
        "w" => libc::F_WRLCK,
        "u" => libc::F_UNLCK,
        _ => return Err(format!("lock type {kind:?}: want r, w or u")),
    } as libc::c_short)
}

/// Per line read from stdin, writes 4096 bytes of `Z` to `fd` at the offset the line names
/// (none: 0) and prints `ok` or the errno, until stdin ends.
fn write_lines(fd: libc::c_int) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let data = [b'Z'; 4096];
    for line in std::io::stdin().lock().lines() {
        let off = match line.as_deref().map(str::trim) {
            Ok("") => 0,
            Ok("sync") => {
                // SAFETY: fsync of a descriptor the caller opened.
                let r = unsafe { libc::fsync(fd) };
                println!(
                    "{}",
                    if r == 0 {
                        "ok".to_string()
                    } else {
                        last_errno()
                    }
                );
                let _ = std::io::stdout().flush();
                continue;
            }
            Ok(n) => num::<i64>(n)?,
            Err(e) => return Err(format!("reading stdin: {e}")),
        };
        // SAFETY: a write from a buffer owned here to a descriptor the caller opened.
        let w = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
        let said = if w == data.len() as isize {
            "ok".to_string()
        } else if w < 0 {
            last_errno()
        } else {
            format!("short write {w}")
        };
        println!("{said}");
        let _ = std::io::stdout().flush();
    }
    Ok(String::new())
}

/// Lock ops, each on its own descriptor of P (opened read-write): `setlk P r|w|u START LEN`,
/// `setlkw P r|w START LEN [ALARM_SECS]` (F_SETLKW, interrupted by SIGALRM after ALARM_SECS),
/// `getlk P r|w START LEN` (prints `unlocked` or `r|w START LEN pid=PID`), `hold P` (a write
/// lock on the whole file: prints `ok`, then waits to be killed), `hold-write P` (the same
/// lock, then per line read from stdin writes 4096 bytes of `Z` at the offset the line names,
/// 0 if none, or fsyncs for a line `sync`, and prints `ok` or the errno, until stdin ends), `write-lines P` (the same
/// without the lock), and `append-locked P TAG N` (N records of 64 bytes appended with
/// O_APPEND, each under flock LOCK_EX).
fn lock_op(a: &[&str]) -> Result<Option<Result<String, String>>, String> {
    let [cmd, p, rest @ ..] = a else {
        return Ok(None);
    };
    if ![
        "setlk",
        "setlkw",
        "getlk",
        "hold",
        "hold-write",
        "write-lines",
        "append-locked",
    ]
    .contains(cmd)
    {
        return Ok(None);
    }
    let append = if *cmd == "append-locked" {
        libc::O_APPEND
    } else {
        0
    };
    // SAFETY (every block below): system calls on a descriptor opened here, on structs owned
    // here, and on a NUL-terminated path that lives across the call.
    let fd = unsafe { libc::open(cstr(p)?.as_ptr(), libc::O_RDWR | append) };
    if fd < 0 {
        return Ok(Some(Err(last_errno())));
    }
    let lock = |kind: &str, start: &str, len: &str| -> Result<libc::flock, String> {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = lock_type(kind)?;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = num(start)?;
        fl.l_len = num(len)?;
        Ok(fl)
    };
    let done = |r: libc::c_int| {
        if r < 0 {
            Err(last_errno())
        } else {
            Ok(String::new())
        }
    };
    let r = match (*cmd, rest) {
        ("setlk", [k, s, l]) => {
            let fl = lock(k, s, l)?;
            done(unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) })
        }
        ("setlkw", [k, s, l, alarm @ ..]) => {
            let fl = lock(k, s, l)?;
            if let [secs] = alarm {
                let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
                sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
                unsafe { libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) };
                unsafe { libc::alarm(num(secs)?) };
            }
            done(unsafe { libc::fcntl(fd, libc::F_SETLKW, &fl) })
        }
        ("getlk", [k, s, l]) => {
            let mut fl = lock(k, s, l)?;
            if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) } < 0 {
                Err(last_errno())
            } else if fl.l_type == libc::F_UNLCK as libc::c_short {
                Ok("unlocked".to_string())
            } else {
                let t = if fl.l_type == libc::F_RDLCK as libc::c_short {
                    "r"
                } else {
                    "w"
                };
                Ok(format!("{t} {} {} pid={}", fl.l_start, fl.l_len, fl.l_pid))
            }
        }
        ("hold", []) => {
            let fl = lock("w", "0", "0")?;
            match done(unsafe { libc::fcntl(fd, libc::F_SETLKW, &fl) }) {
                Ok(_) => {
                    println!("ok");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
                Err(e) => Err(e),
            }
        }
        ("hold-write", []) => {
            use std::io::Write;
            let fl = lock("w", "0", "0")?;
            if let Err(e) = done(unsafe { libc::fcntl(fd, libc::F_SETLKW, &fl) }) {
                return Ok(Some(Err(e)));
            }
            println!("ok");
            let _ = std::io::stdout().flush();
            write_lines(fd)
        }
        ("write-lines", []) => {
            use std::io::Write;
            println!("ok");
            let _ = std::io::stdout().flush();
            write_lines(fd)
        }
        ("append-locked", [tag, n]) => {
            let mut r = Ok(String::new());
            for i in 0..num::<u32>(n)? {
                let mut rec = format!("{tag} {i:08} ").into_bytes();
                rec.resize(63, b'.');
                rec.push(b'\n');
                let step = done(unsafe { libc::flock(fd, libc::LOCK_EX) })
                    .and_then(|_| {
                        let w = unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
                        if w == rec.len() as isize {
                            Ok(String::new())
                        } else if w < 0 {
                            Err(last_errno())
                        } else {
                            Err(format!("short write {w}"))
                        }
                    })
                    .and_then(|_| done(unsafe { libc::flock(fd, libc::LOCK_UN) }));
                if step.is_err() {
                    r = step;
                    break;
                }
            }
            r
        }
        _ => return Err(format!("bad arguments to {cmd}")),
    };
    unsafe { libc::close(fd) };
    Ok(Some(r))
}

/// Runs one op; `Ok(Ok(text))` on success, `Ok(Err(errno name))` when the call failed.
fn op(args: &[String]) -> Result<Result<String, String>, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Some(r) = lock_op(&a)? {
        return Ok(r);
    }
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(last_errno())
        } else {
            Ok(String::new())
        }
    };
    // SAFETY (every block below): system calls on NUL-terminated strings that live across
    // the call and on buffers owned here.
    let r = match a.as_slice() {
        ["stat", p] => {
            let p = cstr(p)?;
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::lstat(p.as_ptr(), &mut st) } < 0 {
                Err(last_errno())
            } else {
                Ok(format!(
                    "mode={:o} uid={} gid={} nlink={} size={}",
                    st.st_mode & 0o7777,
                    st.st_uid,
                    st.st_gid,
                    st.st_nlink,
                    st.st_size
                ))
            }
        }
        ["chmod", p, m] => check(unsafe { libc::chmod(cstr(p)?.as_ptr(), octal(m)?) }),
        ["chown", p, u, g] => {
            let (u, g): (i64, i64) = (num(u)?, num(g)?);
            check(unsafe { libc::lchown(cstr(p)?.as_ptr(), u as libc::uid_t, g as libc::gid_t) })
        }
        ["create", p, m] => {
            let fd = unsafe {
                libc::open(
                    cstr(p)?.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    octal(m)? as libc::c_uint,
                )
            };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            check(fd)
        }
        ["mkdir", p, m] => check(unsafe { libc::mkdir(cstr(p)?.as_ptr(), octal(m)?) }),
        ["write", p, text] => on_open(p, libc::O_WRONLY | libc::O_APPEND, |fd| unsafe {
            libc::write(fd, text.as_ptr().cast(), text.len()) as libc::c_long
        })?,
        ["read", p] => match std::fs::read(p) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) => Err(errno_name(e.raw_os_error().unwrap_or(0))),
        },
        ["truncate", p, len] => check(unsafe { libc::truncate(cstr(p)?.as_ptr(), num(len)?) }),
        ["overwrite", p] => on_open(p, libc::O_WRONLY | libc::O_TRUNC, |_| 0)?,
        ["fallocate", p, len] => {
            let len = num(len)?;
            on_open(p, libc::O_WRONLY, |fd| unsafe {
                libc::c_long::from(libc::fallocate(fd, 0, 0, len))
            })?
        }
        ["unlink", p] => check(unsafe { libc::unlink(cstr(p)?.as_ptr()) }),
        ["rmdir", p] => check(unsafe { libc::rmdir(cstr(p)?.as_ptr()) }),
        ["rename", from, to] => {
            check(unsafe { libc::rename(cstr(from)?.as_ptr(), cstr(to)?.as_ptr()) })
        }
        ["link", from, to] => {
            check(unsafe { libc::link(cstr(from)?.as_ptr(), cstr(to)?.as_ptr()) })
        }
        ["symlink", target, p] => {
            check(unsafe { libc::symlink(cstr(target)?.as_ptr(), cstr(p)?.as_ptr()) })
        }
        ["access", p, mode] => {
            check(unsafe { libc::access(cstr(p)?.as_ptr(), access_mode(mode)?) })
        }
        ["eaccess", p, mode] => check(unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                cstr(p)?.as_ptr(),
                access_mode(mode)?,
                libc::AT_EACCESS,
            )
        }),
        ["euid", spec, rest @ ..] => {
            let (uid, gid): (libc::uid_t, libc::gid_t) = match spec.split_once(':') {
                Some((u, g)) => (num(u)?, num(g)?),
                None => return Err(format!("bad euid {spec:?}: want UID:GID")),
            };
            if unsafe { libc::setegid(gid) } != 0 || unsafe { libc::seteuid(uid) } != 0 {
                return Err(format!("seteuid {spec}: {}", last_errno()));
            }
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            return op(&rest);
        }
        ["utime-now", p] => check(unsafe {
            libc::utimensat(libc::AT_FDCWD, cstr(p)?.as_ptr(), std::ptr::null(), 0)
        }),
        ["setacl", p, which, text] => {
            let v = acl_value(text)?;
            check(unsafe {
                libc::setxattr(
                    cstr(p)?.as_ptr(),
                    acl_name(which)?.as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                )
            })
        }
        ["getacl", p, which] => {
            let mut buf = vec![0u8; 4096];
            let n = unsafe {
                libc::getxattr(
                    cstr(p)?.as_ptr(),
                    acl_name(which)?.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                Err(last_errno())
            } else {
                Ok(acl_text(&buf[..n as usize]))
            }
        }
        ["setxattr", p, name, value] => check(unsafe {
            libc::lsetxattr(
                cstr(p)?.as_ptr(),
                cstr(name)?.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }),
        ["getxattr", p, name] => {
            let mut buf = vec![0u8; 65536];
            let n = unsafe {
                libc::lgetxattr(
                    cstr(p)?.as_ptr(),
                    cstr(name)?.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                Err(last_errno())
            } else {
                Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
            }
        }
        ["listxattr", p] => {
            let mut buf = vec![0u8; 65536];
            let n =
                unsafe { libc::llistxattr(cstr(p)?.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(last_errno())
            } else {
                let mut names: Vec<String> = buf[..n as usize]
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                names.sort();
                Ok(names.join(","))
            }
        }
        ["rmacl", p, which] => {
            check(unsafe { libc::removexattr(cstr(p)?.as_ptr(), acl_name(which)?.as_ptr()) })
        }
        _ => return Err(format!("unknown op or wrong arguments: {a:?}")),
    };
    Ok(r)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--as") {
        let Some(spec) = args.get(1).cloned() else {
            eprintln!("--as needs UID:GID[:GROUPS]");
            return ExitCode::from(2);
        };
        if let Err(e) = become_user(&spec) {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        args.drain(..2);
    }
    if args.first().map(String::as_str) == Some("--umask") {
        let Some(mask) = args.get(1).map(|m| octal(m)) else {
            eprintln!("--umask needs an octal mask");
            return ExitCode::from(2);
        };
        match mask {
            // SAFETY: umask only sets this process's mask.
            Ok(m) => unsafe {
                libc::umask(m);
            },
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
        args.drain(..2);
    }
    match op(&args) {
        Ok(Ok(text)) if text.is_empty() => println!("ok"),
        Ok(Ok(text)) => println!("ok {text}"),
        Ok(Err(errno)) => println!("{errno}"),
        Err(usage) => {
            eprintln!("shoal-fsop: {usage}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
