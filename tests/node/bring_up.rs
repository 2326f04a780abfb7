//! Bringing the node up: the bridge, the control plane on the node's address, containerd with CRI, the CNI
//! configuration, the kubelet, kube-proxy, the controller-manager and the scheduler, then waiting until the node
//! is Ready and its ServiceAccounts and the `kubernetes` Service work.

use super::*;

impl Node {
    pub(super) fn bring_up(&mut self) {
        let w = self.work.clone();
        // The bridge first: everything listens on its address.
        must(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]));
        must(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE]));
        must(Command::new("ip").args(["link", "set", BRIDGE, "up"]));

        let cluster = Cluster::start_with(&ClusterOptions {
            address: IpAddr::V4(NODE_IP),
            node: true,
            dir_in: Some(w.clone()),
        });
        let marker = cluster.dir().to_string_lossy().into_owned();
        for pid in cluster.pids() {
            self.record(pid, &marker);
        }
        let pki = cluster.dir().join("pki");
        let admin = cluster.kubeconfig.clone();
        let kubelet_kubeconfig =
            cluster.kubeconfig_for(&format!("system:node:{NODE_NAME}"), &["system:nodes"]);
        self.cluster = Some(cluster);

        // containerd with CRI.
        let runc_root = w.join("runc");
        let cni_conf = w.join("cni/net.d");
        fs::create_dir_all(&cni_conf).unwrap();
        fs::write(
            w.join("containerd.toml"),
            crate::clients::containerd_config(&w.join("containerd"), &self.containerd_sock, true)
                + &format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM withholds CAP_SYS_RESOURCE: a negative oom_score_adj (asked for every sandbox) fails every pod.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                    pause = PAUSE_IMAGE,
                    runc = runc_root.display(),
                    cni = cni_conf.display(),
                ),
        )
        .unwrap();
        fs::write(
            cni_conf.join("10-berth-node.conflist"),
            serde_json::to_string_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "berth-node",
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "isDefaultGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP.to_string()}]],
                        "dataDir": w.join("cni/ipam").to_string_lossy(),
                    }
                }]
            }))
            .unwrap(),
        )
        .unwrap();
        let conf = w.join("containerd.toml");
        self.spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&conf),
        );
        self.wait_for(Duration::from_secs(30), "containerd to answer", |n| {
            n.ctr(&["version"]).status.success().then_some(())
        });
        let pause = w.join("pause.tar");
        images::pause_image(&w.join("images"), &cached("pause"), PAUSE_IMAGE, &pause);
        self.import(&pause);

        // kubelet.
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let kubelet_port = free_port_on(IpAddr::V4(NODE_IP));
        fs::write(
            w.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions ndots:1\n",
        )
        .unwrap();
        fs::write(
            w.join("kubelet.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {kubelet_port}
readOnlyPort: 0
healthzPort: 0
cgroupDriver: cgroupfs
failSwapOn: false
makeIPTablesUtilChains: false
volumePluginDir: {plugins}
resolvConf: {resolv}
clusterDomain: cluster.local
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
",
                plugins = w.join("kubelet-plugins").display(),
                resolv = w.join("resolv.conf").display(),
                ca = pki.join("ca.crt").display(),
            ),
        )
        .unwrap();
        let root_dir = w.join("kubelet");
        self.spawn(
            "kubelet",
            Command::new(cached("kubelet"))
                .arg(format!("--config={}", w.join("kubelet.yaml").display()))
                .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
                .arg("--container-runtime=remote")
                .arg(format!(
                    "--container-runtime-endpoint=unix://{}",
                    self.containerd_sock.display()
                ))
                .arg(format!("--root-dir={}", root_dir.display()))
                .arg(format!("--cert-dir={}", w.join("kubelet-pki").display()))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--node-ip={NODE_IP}"))
                .arg(format!("--pod-infra-container-image={PAUSE_IMAGE}"))
                .arg("--logtostderr=true")
                .arg("--v=2"),
        );
        self.spawn(
            "kube-proxy",
            Command::new(cached("kube-proxy"))
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg("--proxy-mode=iptables")
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--bind-address={NODE_IP}"))
                .arg(format!("--cluster-cidr={POD_SUBNET}"))
                // Leave the machine's conntrack settings alone.
                .arg("--conntrack-max-per-core=0")
                .arg("--conntrack-tcp-timeout-established=0")
                .arg("--conntrack-tcp-timeout-close-wait=0")
                .arg(format!(
                    "--healthz-bind-address=127.0.0.1:{}",
                    free_port_on(localhost)
                ))
                .arg(format!(
                    "--metrics-bind-address=127.0.0.1:{}",
                    free_port_on(localhost)
                ))
                .arg("--logtostderr=true")
                .arg("--v=1"),
        );
        self.spawn(
            "kube-controller-manager",
            Command::new(cached("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg("--leader-elect=false")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    pki.join("sa.key").display()
                ))
                .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
                .arg("--node-monitor-period=1s")
                .arg(format!(
                    "--flex-volume-plugin-dir={}",
                    w.join("flex").display()
                ))
                .arg("--port=0")
                .arg("--secure-port=0")
                .arg("--logtostderr=true")
                .arg("--v=1"),
        );
        self.spawn(
            "kube-scheduler",
            Command::new(cached("kube-scheduler"))
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg("--leader-elect=false")
                .arg("--port=0")
                .arg("--secure-port=0")
                .arg("--logtostderr=true")
                .arg("--v=1"),
        );

        self.wait_for(Duration::from_secs(90), "node berth-node Ready", |n| {
            let out = n.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ]);
            (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
        });
        self.wait_for(
            Duration::from_secs(60),
            "the default ServiceAccount's token",
            |n| {
                let out = n.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ]);
                (out.status.success() && !out.stdout.is_empty()).then_some(())
            },
        );
        self.wait_for(
            Duration::from_secs(30),
            "the kubernetes Service's endpoint",
            |n| {
                let out = n.kubectl(&[
                    "get",
                    "endpoints",
                    "kubernetes",
                    "-o",
                    "jsonpath={.subsets[0].addresses[0].ip}",
                ]);
                (String::from_utf8_lossy(&out.stdout) == NODE_IP.to_string()).then_some(())
            },
        );
        // Kubernetes 1.20 does not label namespaces with their name; the README asks for this label.
        self.kubectl_ok(&["label", "namespace", "kube-system", "berth.dev/ignore=true"]);
    }
}
