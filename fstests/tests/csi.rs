//! The CSI driver through its socket, as kubelet and the sidecars drive it: a conformance run
//! of our own (what the community's csi-sanity checks: identity, idempotency, conflicts,
//! capability checks, expansion, stage and publish twice, missing arguments, stats), and an
//! end-to-end run with two node plugins sharing a volume, a plugin restart and a dead client.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_fstests::{bin, TestCluster};
use shoal_proto::csi::controller_client::ControllerClient;
use shoal_proto::csi::identity_client::IdentityClient;
use shoal_proto::csi::node_client::NodeClient;
use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use shoal_proto::csi::*;
use tonic::transport::Channel;
use tonic::Code;

/// A running `shoal-csi` (killed when dropped; its mounts are not, see [`MountSweep`]).
struct Plugin {
    child: Child,
    socket: PathBuf,
    state: PathBuf,
    args: Vec<String>,
    /// Runs as a container does: in a PID namespace of its own, whose processes all die
    /// with it.
    contained: bool,
}

impl Plugin {
    /// Starts `shoal-csi --mode MODE` for cluster `c` with its socket and state in `dir`.
    fn start(c: &TestCluster, dir: &Path, mode: &str, node: &str) -> Plugin {
        Plugin::start_repairing(c, dir, mode, node, 1)
    }

    /// The same, checking for dead mounts every `repair_secs`.
    fn start_repairing(
        c: &TestCluster,
        dir: &Path,
        mode: &str,
        node: &str,
        repair_secs: u64,
    ) -> Plugin {
        let state = dir.join("state");
        Plugin::launch(c, dir, mode, node, &state, repair_secs, None)
    }

    /// `shoal-csi --mode MODE` (node or mounter) with the mounter's socket at `mounter`, as
    /// a container of a node's pod: in a PID namespace of its own, so that killing it kills
    /// every process it started, as a container runtime does. State is shared through
    /// `state`, as the pod's containers share the host's /var/lib/shoal-csi.
    fn container(c: &TestCluster, dir: &Path, mode: &str, state: &Path, mounter: &Path) -> Plugin {
        Plugin::launch(c, dir, mode, "node-c", state, 1, Some(mounter))
    }

    /// Starts a plugin with its CSI socket and log in `dir`; with `mounter`, contained (see
    /// [`Plugin::container`]) and using (or, in mounter mode, serving) that socket.
    fn launch(
        c: &TestCluster,
        dir: &Path,
        mode: &str,
        node: &str,
        state: &Path,
        repair_secs: u64,
        mounter: Option<&Path>,
    ) -> Plugin {
        fs::create_dir_all(dir).unwrap();
        let endpoint = dir.join("csi.sock");
        let socket = match mounter {
            Some(m) if mode == "mounter" => m.to_path_buf(),
            _ => endpoint.clone(),
        };
        let mut args: Vec<String> = vec![
            "--endpoint".into(),
            format!("unix://{}", endpoint.display()),
            "--mode".into(),
            mode.into(),
            "--mds".into(),
            c.data.display().to_string(),
            "--node-id".into(),
            node.into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--repair-secs".into(),
            repair_secs.to_string(),
        ];
        if let Some(m) = mounter {
            args.extend(["--mounter".into(), m.display().to_string()]);
        }
        let _ = fs::remove_file(&socket);
        let contained = mounter.is_some();
        let child = Plugin::spawn(&args, dir, contained);
        let p = Plugin {
            child,
            socket,
            state: state.to_path_buf(),
            args,
            contained,
        };
        p.wait_serving();
        p
    }

    fn spawn(args: &[String], dir: &Path, contained: bool) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("plugin.log"))
            .unwrap();
        let mut cmd = if contained {
            let mut u = Command::new("unshare");
            // --kill-child: the namespace's first process dies with this one, and with it
            // every process of the namespace.
            u.args(["--pid", "--fork", "--kill-child", "--"])
                .arg(bin("shoal-csi"));
            u
        } else {
            Command::new(bin("shoal-csi"))
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn shoal-csi")
    }

    fn wait_serving(&self) {
        let start = Instant::now();
        while !self.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "shoal-csi never served"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the plugin (SIGKILL, as a crash or a container restart would) and starts it
    /// again with the same arguments.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
        self.child = Plugin::spawn(&self.args, &self.log_dir(), self.contained);
        self.wait_serving();
    }

    /// Where the plugin logs: beside its CSI socket.
    fn log_dir(&self) -> PathBuf {
        let endpoint = &self.args[1];
        PathBuf::from(endpoint.trim_start_matches("unix://"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        tonic::transport::Endpoint::from_static("http://csi.local")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .expect("connect to the plugin's socket")
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Detaches every mount under a directory when dropped (the FUSE clients then exit), so a
/// failed test leaves nothing mounted.
struct MountSweep(PathBuf);

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v
}

impl Drop for MountSweep {
    fn drop(&mut self) {
        for m in mounts_under(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&m).output();
        }
    }
}

fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn rwx() -> VolumeCapability {
    mount_cap(Mode::MultiNodeMultiWriter)
}

fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn stage_req(id: &str, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        readonly,
        ..Default::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn csi_conformance() {
    let c = TestCluster::start();
    let dir = c.root.path().join("csi");
    let _sweep = MountSweep(dir.clone());
    let plugin = Plugin::start(&c, &dir, "all", "node-a");
    rt().block_on(async {
        let ch = plugin.channel().await;
        let (mut id, mut ctl, mut node) = (
            IdentityClient::new(ch.clone()),
            ControllerClient::new(ch.clone()),
            NodeClient::new(ch),
        );

        // Identity.
        let info = id
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "csi.shoal.io");
        assert!(!info.vendor_version.is_empty());
        let caps = id
            .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        let text = format!("{caps:?}");
        assert!(
            text.contains("Service { r#type: ControllerService }"),
            "{text}"
        );
        assert!(
            text.contains("VolumeExpansion { r#type: Online }"),
            "{text}"
        );
        let probe = id.probe(ProbeRequest {}).await.unwrap().into_inner();
        assert_eq!(probe.ready, Some(true));
        let ccaps = ctl
            .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        let types: Vec<i32> = ccaps
            .capabilities
            .iter()
            .filter_map(|c| {
                c.r#type
                    .as_ref()
                    .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect();
        use controller_service_capability::rpc::Type as C;
        for want in [
            C::CreateDeleteVolume,
            C::ListVolumes,
            C::GetCapacity,
            C::ExpandVolume,
        ] {
            assert!(types.contains(&(want as i32)), "{want:?} in {types:?}");
        }

        // CreateVolume: arguments checked, idempotent by name, conflicts refused.
        let mut no_name = create_req("", 1 << 20);
        no_name.name.clear();
        assert_eq!(
            code(ctl.create_volume(no_name).await),
            Code::InvalidArgument
        );
        let mut no_caps = create_req("pvc-x", 1 << 20);
        no_caps.volume_capabilities.clear();
        assert_eq!(
            code(ctl.create_volume(no_caps).await),
            Code::InvalidArgument
        );
        let mut block = create_req("pvc-x", 1 << 20);
        block.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume {}));
        assert_eq!(code(ctl.create_volume(block).await), Code::InvalidArgument);
        assert_eq!(
            code(ctl.create_volume(create_req("../escape", 1 << 20)).await),
            Code::InvalidArgument
        );
        let mut bad_param = create_req("pvc-x", 1 << 20);
        bad_param.parameters.insert("speed".into(), "fast".into());
        assert_eq!(
            code(ctl.create_volume(bad_param).await),
            Code::InvalidArgument
        );
        let mut bad_replicas = create_req("pvc-x", 1 << 20);
        bad_replicas
            .parameters
            .insert("replicas".into(), "7".into());
        assert_eq!(
            code(ctl.create_volume(bad_replicas).await),
            Code::InvalidArgument
        );
        let mut bad_range = create_req("pvc-x", 2 << 20);
        bad_range.capacity_range.as_mut().unwrap().limit_bytes = 1 << 20;
        assert_eq!(code(ctl.create_volume(bad_range).await), Code::OutOfRange);

        let v1 = ctl
            .create_volume(create_req("pvc-1", 10 << 20))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(
            (v1.volume_id.as_str(), v1.capacity_bytes),
            ("pvc-1", 10 << 20)
        );
        let again = ctl
            .create_volume(create_req("pvc-1", 10 << 20))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(again, v1, "the same request answers the same volume");
        assert_eq!(
            code(ctl.create_volume(create_req("pvc-1", 20 << 20)).await),
            Code::AlreadyExists
        );
        let mut params = create_req("pvc-2", 1 << 20);
        params.parameters.insert("maxFiles".into(), "100".into());
        params
            .parameters
            .insert("layout".into(), "stripe_unit=65536 stripe_count=2".into());
        params
            .parameters
            .insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
        ctl.create_volume(params).await.unwrap();
        ctl.create_volume(create_req("pvc-3", 1 << 20))
            .await
            .unwrap();

        // ValidateVolumeCapabilities.
        let validate = |id: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: caps,
            ..Default::default()
        };
        assert_eq!(
            code(
                ctl.validate_volume_capabilities(validate("nope", vec![rwx()]))
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                ctl.validate_volume_capabilities(validate("pvc-1", vec![]))
                    .await
            ),
            Code::InvalidArgument
        );
        let ok = ctl
            .validate_volume_capabilities(validate("pvc-1", vec![rwx()]))
            .await
            .unwrap()
            .into_inner();
        assert!(ok.confirmed.is_some());
        let block_cap = VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        };
        let no = ctl
            .validate_volume_capabilities(validate("pvc-1", vec![block_cap]))
            .await
            .unwrap()
            .into_inner();
        assert!(no.confirmed.is_none() && !no.message.is_empty());

        // ListVolumes pages; a token that means nothing is ABORTED.
        let page = ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 2,
                starting_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.entries.len(), 2);
        assert!(!page.next_token.is_empty());
        let rest = ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 2,
                starting_token: page.next_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.entries.len(), 1);
        assert!(rest.next_token.is_empty());
        let mut names: Vec<String> = page
            .entries
            .iter()
            .chain(&rest.entries)
            .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["pvc-1", "pvc-2", "pvc-3"]);
        assert_eq!(
            code(
                ctl.list_volumes(ListVolumesRequest {
                    max_entries: 1,
                    starting_token: "garbage".into(),
                })
                .await
            ),
            Code::Aborted
        );
        let cap = ctl
            .get_capacity(GetCapacityRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(cap.available_capacity > 0);

        // ControllerExpandVolume.
        let expand = |id: &str, bytes: i64| ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let grown = ctl
            .controller_expand_volume(expand("pvc-1", 30 << 20))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grown.capacity_bytes, 30 << 20);
        assert!(!grown.node_expansion_required);
        let same = ctl
            .controller_expand_volume(expand("pvc-1", 5 << 20))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(same.capacity_bytes, 30 << 20, "never shrinks");
        assert_eq!(
            code(ctl.controller_expand_volume(expand("nope", 1 << 20)).await),
            Code::NotFound
        );
        let mut no_range = expand("pvc-1", 1);
        no_range.capacity_range = None;
        assert_eq!(
            code(ctl.controller_expand_volume(no_range).await),
            Code::InvalidArgument
        );

        // Node: info, capabilities, arguments.
        let ni = node
            .node_get_info(NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ni.node_id, "node-a");
        let ncaps = node
            .node_get_capabilities(NodeGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            format!("{ncaps:?}").contains("StageUnstageVolume"),
            "{ncaps:?}"
        );
        let staging = dir.join("staging/pvc-1");
        let target = dir.join("pods/one/mount");
        let mut no_path = stage_req("pvc-1", &staging);
        no_path.staging_target_path.clear();
        assert_eq!(
            code(node.node_stage_volume(no_path).await),
            Code::InvalidArgument
        );
        let mut relative = stage_req("pvc-1", &staging);
        relative.staging_target_path = "relative/dir".into();
        assert_eq!(
            code(node.node_stage_volume(relative).await),
            Code::InvalidArgument
        );
        let mut dotdot = stage_req("pvc-1", &staging);
        dotdot.staging_target_path = format!("{}/../../etc", staging.display());
        assert_eq!(
            code(node.node_stage_volume(dotdot).await),
            Code::InvalidArgument
        );
        let mut no_cap = stage_req("pvc-1", &staging);
        no_cap.volume_capability = None;
        assert_eq!(
            code(node.node_stage_volume(no_cap).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                node.node_publish_volume(publish_req("pvc-1", &staging, &target, false))
                    .await
            ),
            Code::FailedPrecondition,
            "publish before stage"
        );

        // Stage and publish twice each: the same answer, one mount each.
        node.node_stage_volume(stage_req("pvc-1", &staging))
            .await
            .unwrap();
        node.node_stage_volume(stage_req("pvc-1", &staging))
            .await
            .unwrap();
        node.node_publish_volume(publish_req("pvc-1", &staging, &target, false))
            .await
            .unwrap();
        node.node_publish_volume(publish_req("pvc-1", &staging, &target, false))
            .await
            .unwrap();
        assert_eq!(mounts_under(&dir).len(), 2, "{:?}", mounts_under(&dir));
        assert_eq!(
            code(
                node.node_publish_volume(publish_req("pvc-1", &staging, &target, true))
                    .await
            ),
            Code::AlreadyExists,
            "the same target read-only"
        );
        fs::write(target.join("hello"), b"through the pod's path").unwrap();
        assert_eq!(
            fs::read(c.path("volumes/pvc-1/hello")).unwrap(),
            b"through the pod's path"
        );
        // A read-only publish is read-only.
        let ro_target = dir.join("pods/two/mount");
        node.node_publish_volume(publish_req("pvc-1", &staging, &ro_target, true))
            .await
            .unwrap();
        assert_eq!(
            fs::read(ro_target.join("hello")).unwrap(),
            b"through the pod's path"
        );
        let denied = fs::write(ro_target.join("x"), b"x").unwrap_err();
        assert_eq!(denied.raw_os_error(), Some(libc::EROFS));

        // Stats: the quota as the size, inodes; a path without the volume is NOT_FOUND.
        let stats = node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: "pvc-1".into(),
                volume_path: target.display().to_string(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let bytes = stats
            .usage
            .iter()
            .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
            .unwrap();
        assert_eq!(bytes.total, 30 << 20);
        assert!(bytes.used > 0 && bytes.available < bytes.total);
        assert!(stats
            .usage
            .iter()
            .any(|u| u.unit == volume_usage::Unit::Inodes as i32));
        assert_eq!(stats.volume_condition.map(|c| c.abnormal), Some(false));
        assert_eq!(
            code(
                node.node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: "pvc-1".into(),
                    volume_path: dir.join("nowhere").display().to_string(),
                    staging_target_path: String::new(),
                })
                .await
            ),
            Code::NotFound
        );

        // Unpublish and unstage twice each, and of what was never published: all fine.
        let unpub = |t: &Path| NodeUnpublishVolumeRequest {
            volume_id: "pvc-1".into(),
            target_path: t.display().to_string(),
        };
        node.node_unpublish_volume(unpub(&dir.join("pods/never/mount")))
            .await
            .unwrap();
        for t in [&target, &target, &ro_target] {
            node.node_unpublish_volume(unpub(t)).await.unwrap();
        }
        let unstage = NodeUnstageVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: staging.display().to_string(),
        };
        node.node_unstage_volume(unstage.clone()).await.unwrap();
        node.node_unstage_volume(unstage).await.unwrap();
        assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
        assert!(!target.exists(), "the target directory is removed");

        // DeleteVolume: idempotent; an unknown id is fine, a missing one is not.
        for v in ["pvc-1", "pvc-1", "pvc-2", "pvc-3", "never-made"] {
            ctl.delete_volume(DeleteVolumeRequest {
                volume_id: v.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(
            code(ctl.delete_volume(DeleteVolumeRequest::default()).await),
            Code::InvalidArgument
        );
        let left = ctl
            .list_volumes(ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(left.entries.is_empty());
    });
}

/// statvfs(2) total bytes of `p`.
fn total_bytes(p: &Path) -> u64 {
    let c = shoal_fstests::cpath(p);
    // SAFETY: a zeroed plain struct the call fills, and a NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_blocks as u64 * s.f_frsize as u64
}

/// The pid of the FUSE client a node plugin started (its only one).
fn fuse_pid(state: &Path) -> i32 {
    let dir = state.join("pid");
    let f = fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
    fs::read_to_string(f.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn csi_end_to_end_two_nodes_a_plugin_restart_and_a_dead_client() {
    let c = TestCluster::start();
    let dir = c.root.path().join("csi");
    let _sweep = MountSweep(dir.clone());
    let controller = Plugin::start(&c, &dir.join("controller"), "controller", "ctl");
    let mut plugin_a = Plugin::start(&c, &dir.join("node-a"), "node", "node-a");
    // Node b looks for dead mounts only every 10 minutes: the test shows a publish repairing.
    let plugin_b = Plugin::start_repairing(&c, &dir.join("node-b"), "node", "node-b", 600);
    let (sa, ta) = (dir.join("node-a/staging"), dir.join("node-a/pod/mount"));
    let (sb, tb) = (dir.join("node-b/staging"), dir.join("node-b/pod/mount"));
    rt().block_on(async {
        let mut ctl = ControllerClient::new(controller.channel().await);
        let mut na = NodeClient::new(plugin_a.channel().await);
        let mut nb = NodeClient::new(plugin_b.channel().await);

        // Provisioned by the controller, staged and published on two nodes.
        let v = ctl
            .create_volume(create_req("pvc-media", 2 << 20))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let id = v.volume_id.as_str();
        na.node_stage_volume(stage_req(id, &sa)).await.unwrap();
        na.node_publish_volume(publish_req(id, &sa, &ta, false))
            .await
            .unwrap();
        nb.node_stage_volume(stage_req(id, &sb)).await.unwrap();
        nb.node_publish_volume(publish_req(id, &sb, &tb, false))
            .await
            .unwrap();

        // Written on one node, read on the other.
        let clip: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(ta.join("clip"), &clip).unwrap();
        assert!(fs::read(tb.join("clip")).unwrap() == clip);

        // Expanded, the pods see the new size; past it, writes fail with EDQUOT.
        assert_eq!(total_bytes(&tb), 2 << 20);
        ctl.controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 4 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(total_bytes(&ta), 4 << 20);
        let over = fs::write(tb.join("too-big"), vec![1u8; 4 << 20]).unwrap_err();
        assert_eq!(over.raw_os_error(), Some(libc::EDQUOT));
        fs::remove_file(tb.join("too-big")).unwrap();

        // The plugin on node a is killed and started again: both mounts serve on meanwhile,
        // and it finds its mounts (publishing again is a no-op).
        let fuse_a = fuse_pid(&plugin_a.state);
        plugin_a.restart();
        fs::write(ta.join("during-restart"), b"still here").unwrap();
        assert_eq!(fs::read(tb.join("during-restart")).unwrap(), b"still here");
        let mut na = NodeClient::new(plugin_a.channel().await);
        na.node_publish_volume(publish_req(id, &sa, &ta, false))
            .await
            .unwrap();
        assert_eq!(
            fuse_pid(&plugin_a.state),
            fuse_a,
            "the same client serves on"
        );
        assert_eq!(mounts_under(&dir.join("node-a")).len(), 2);

        // Node b's FUSE client dies: its mounts stop answering until the plugin mounts the
        // volume again at the same path and binds the pod's path again (the repair loop or
        // the next publish, whichever comes first).
        let fuse_b = fuse_pid(&plugin_b.state);
        // SAFETY: kill(2) of a process this test's plugin started.
        assert_eq!(unsafe { libc::kill(fuse_b, libc::SIGKILL) }, 0);
        let start = Instant::now();
        while shoal_fstests::alive(fuse_b) {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = |path: &Path| NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.display().to_string(),
            staging_target_path: String::new(),
        };
        let sick = nb
            .node_get_volume_stats(stats(&tb))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            sick.volume_condition.map(|c| c.abnormal),
            Some(true),
            "a dead client shows"
        );
        nb.node_publish_volume(publish_req(id, &sb, &tb, false))
            .await
            .unwrap();
        assert!(fs::read(tb.join("clip")).unwrap() == clip, "repaired");
        let well = nb
            .node_get_volume_stats(stats(&tb))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(well.volume_condition.map(|c| c.abnormal), Some(false));
        fs::write(tb.join("after-repair"), b"b writes again").unwrap();
        assert_eq!(
            fs::read(ta.join("after-repair")).unwrap(),
            b"b writes again"
        );
        assert_ne!(fuse_pid(&plugin_b.state), fuse_b, "a new client");
        assert_eq!(
            mounts_under(&dir.join("node-b")).len(),
            2,
            "no stale mounts left"
        );

        // On node a, which checks every second, the repair loop alone brings a dead client's
        // mounts back.
        let fuse_a = fuse_pid(&plugin_a.state);
        // SAFETY: kill(2) of a process this test's plugin started.
        assert_eq!(unsafe { libc::kill(fuse_a, libc::SIGKILL) }, 0);
        let start = Instant::now();
        loop {
            match fs::read(ta.join("clip")) {
                Ok(got) if got == clip && fuse_pid(&plugin_a.state) != fuse_a => break,
                _ => {}
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the repair loop never mounted node a again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // Unpublished, unstaged and deleted: nothing left behind.
        for (n, s, t) in [(&mut na, &sa, &ta), (&mut nb, &sb, &tb)] {
            n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: t.display().to_string(),
            })
            .await
            .unwrap();
            n.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: s.display().to_string(),
            })
            .await
            .unwrap();
        }
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    for p in [&plugin_a, &plugin_b] {
        for kind in ["staged", "published"] {
            let left = fs::read_dir(p.state.join(kind)).unwrap().count();
            assert_eq!(left, 0, "{kind} records left in {}", p.state.display());
        }
    }
    assert!(!c.path("volumes/pvc-media").exists());
    let start = Instant::now();
    while !c.object_files().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "objects left");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The FUSE clients exit once unmounted.
    let start = Instant::now();
    let fuse = fuse_pid(&plugin_a.state);
    while shoal_fstests::alive(fuse) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a FUSE client lingers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host pid of the live `shoal-fuse` mounting at `path` (pid files hold the pid in the
/// starter's PID namespace).
fn fuse_at(path: &Path) -> i32 {
    let want = path.display().to_string();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("shoal-fuse"))
            && args.contains(&want)
            && shoal_fstests::alive(pid)
        {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "clients mounting {want}: {found:?}");
    found[0]
}

/// Waits until process `pid` is gone.
fn wait_gone(pid: i32, what: &str) {
    let start = Instant::now();
    while shoal_fstests::alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(10), "{what} lingers");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn csi_node_plugin_container_restarts_leave_the_mounters_clients_serving() {
    let c = TestCluster::start();
    let dir = c.root.path().join("csi");
    let _sweep = MountSweep(dir.clone());
    let controller = Plugin::start(&c, &dir.join("controller"), "controller", "ctl");
    // One node's pod: the plugin and the mounter, two containers sharing a state directory
    // and the mounter's socket, each in a PID namespace of its own.
    let state = dir.join("node/state");
    let sock = dir.join("node/mounter/mounter.sock");
    let mut mounter = Plugin::container(&c, &dir.join("node/mounter"), "mounter", &state, &sock);
    let mut plugin = Plugin::container(&c, &dir.join("node/plugin"), "node", &state, &sock);
    let (st, tg) = (dir.join("node/staging"), dir.join("node/pod/mount"));
    rt().block_on(async {
        let mut ctl = ControllerClient::new(controller.channel().await);
        let mut n = NodeClient::new(plugin.channel().await);
        let v = ctl
            .create_volume(create_req("pvc-kept", 2 << 20))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let id = v.volume_id.as_str();
        n.node_stage_volume(stage_req(id, &st)).await.unwrap();
        n.node_publish_volume(publish_req(id, &st, &tg, false))
            .await
            .unwrap();
        fs::write(tg.join("before"), b"staged through the mounter").unwrap();
        let fuse = fuse_at(&st);

        // The plugin's container is killed (a crash, a liveness failure, an upgrade) and
        // comes back: the pod's mount serves throughout, by the same client.
        let _ = plugin.child.kill();
        let _ = plugin.child.wait();
        fs::write(tg.join("while-away"), b"the plugin is gone").unwrap();
        assert_eq!(
            fs::read(tg.join("before")).unwrap(),
            b"staged through the mounter"
        );
        assert!(
            shoal_fstests::alive(fuse),
            "the client died with the plugin"
        );
        plugin.restart();
        let mut n = NodeClient::new(plugin.channel().await);
        n.node_publish_volume(publish_req(id, &st, &tg, false))
            .await
            .unwrap();
        assert_eq!(fuse_at(&st), fuse, "the same client serves on");
        assert_eq!(
            fs::read(tg.join("while-away")).unwrap(),
            b"the plugin is gone"
        );

        // A container's processes do die with it: the mounter's own restart takes its
        // clients along, and the plugin's repair loop mounts the volume again through the
        // restarted mounter, at the same paths.
        let _ = mounter.child.kill();
        let _ = mounter.child.wait();
        wait_gone(fuse, "the mounter's client");
        let before = fuse;
        mounter.restart();
        let start = Instant::now();
        loop {
            match fs::read(tg.join("while-away")) {
                Ok(got) if got == b"the plugin is gone" => break,
                _ => {}
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the repair loop never mounted the volume again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let fuse = fuse_at(&st);
        assert_ne!(fuse, before, "a new client");
        assert_eq!(mounts_under(&dir.join("node")).len(), 2, "no stale mounts");

        n.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: tg.display().to_string(),
        })
        .await
        .unwrap();
        n.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: st.display().to_string(),
        })
        .await
        .unwrap();
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        wait_gone(fuse, "an unmounted client");
    });
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
}
