//! Real tools inside the mount: git and a C compiler.

use std::process::Command;

use shoal_fstests::TestCluster;

fn run(dir: &std::path::Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{cmd} is needed for this test (scripts/deps.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn git_init_add_commit() {
    let c = TestCluster::start();
    let repo = c.path("repo");
    std::fs::create_dir(&repo).unwrap();
    run(&repo, "git", &["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    std::fs::create_dir(repo.join("src")).unwrap();
    std::fs::write(repo.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    run(&repo, "git", &["add", "."]);
    let id = [
        "-c",
        "user.name=Shoal Test",
        "-c",
        "user.email=test@shoal.invalid",
    ];
    let mut args = id.to_vec();
    args.extend(["commit", "-q", "-m", "first"]);
    run(&repo, "git", &args);
    std::fs::write(repo.join("README"), "hello again\n").unwrap();
    let mut args = id.to_vec();
    args.extend(["commit", "-q", "-am", "second"]);
    run(&repo, "git", &args);
    assert_eq!(
        run(&repo, "git", &["log", "--format=%s"]),
        "second\nfirst\n"
    );
    assert_eq!(run(&repo, "git", &["status", "--porcelain"]), "");
    run(&repo, "git", &["fsck", "--strict"]);
    assert_eq!(run(&repo, "git", &["show", "HEAD~1:README"]), "hello\n");
}

#[test]
fn gcc_compiles_and_runs_a_program() {
    let c = TestCluster::start();
    let dir = c.path("cc");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("hello.c"),
        "#include <stdio.h>\nint main(void) { long s = 0; for (int i = 1; i <= 100; i++) s += i; printf(\"sum=%ld\\n\", s); return 0; }\n",
    )
    .unwrap();
    run(&dir, "gcc", &["-O2", "-o", "hello", "hello.c"]);
    assert_eq!(run(&dir, "./hello", &[]), "sum=5050\n");
}
