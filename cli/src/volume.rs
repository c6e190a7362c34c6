//! `shoal volume`: volumes (directories under `/volumes/` with a quota) from the command line.

use std::time::Duration;

use anyhow::{bail, Context};
use shoal_client::volumes::{self, Volume};
use shoal_client::{Client, Cluster};

/// Parses a size: a number with an optional unit, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`
/// (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000); `B` or none: bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size (e.g. 10GiB, 500M, 1048576)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => bail!("unknown size unit {u:?} in {s:?} (K, M, G, T, KiB…, KB…)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s:?} is too large"))
}

/// A size as people read it (binary units, one decimal).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A client of the cluster at `mds`.
pub async fn connect(mds: &[String]) -> anyhow::Result<Client> {
    let cluster = Cluster::connect(mds, Duration::from_secs(30))
        .await
        .with_context(|| format!("connecting to the cluster at {}", mds.join(",")))?;
    Ok(Client::new(cluster))
}

/// The table `shoal volume ls` prints.
pub fn render(vols: &[Volume]) -> String {
    let mut out = format!(
        "{:<40} {:>12} {:>12} {:>6} {:>10} {:>10}\n",
        "NAME", "SIZE", "USED", "USE%", "FILES", "MAX FILES"
    );
    for v in vols {
        let pct = v
            .used_bytes
            .saturating_mul(100)
            .checked_div(v.max_bytes)
            .map_or_else(|| "-".into(), |p| format!("{p}%"));
        let max_files = if v.max_files > 0 {
            v.max_files.to_string()
        } else {
            "-".into()
        };
        out += &format!(
            "{:<40} {:>12} {:>12} {:>6} {:>10} {:>10}\n",
            v.name,
            human(v.max_bytes),
            human(v.used_bytes),
            pct,
            v.files,
            max_files
        );
    }
    out
}

/// Creates a volume (the same again is a no-op); prints what it made.
pub async fn create(c: &Client, name: &str, size: u64, max_files: u64) -> anyhow::Result<()> {
    let v = volumes::create(c, name, size, max_files, 0o755, None).await?;
    println!(
        "volume {}: {} ({} files max), at /{}/{}",
        v.name,
        human(v.max_bytes),
        if v.max_files > 0 {
            v.max_files.to_string()
        } else {
            "no limit on".into()
        },
        volumes::VOLUMES_DIR,
        v.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_junk() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2KB").unwrap(), 2000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size(" 1 TiB ").unwrap(), 1 << 40);
        for bad in ["", "G", "10XB", "-1G", "1.5G", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("20000000T").is_err(), "overflow");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
