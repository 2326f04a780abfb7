//! The `berth` command: parses the command line, builds the configuration, runs. The only place errors are printed
//! and turned into exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::admission::debug;
use berth::admission::policy::Policy;
use berth::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "An in-cluster OCI registry that guards a Kubernetes cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry and the admission webhooks on one listener.
    Serve(Box<ServeArgs>),
    /// Check and debug image policies before applying them.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The node-local pull endpoint: plain HTTP on loopback, forwarding pulls to berth over TLS.
    NodeProxy(berth::node_proxy::NodeProxyArgs),
    /// Certificates for manual or local use.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Read berth's event log: pushes, pulls, deletes, admission decisions, with who and when.
    Events(Box<berth::events::client::EventsArgs>),
    /// Per repository and tag: the digest, pushes, pulls, pullers, nodes and pods; --outdated: what runs out of date.
    Images(Box<berth::events::client::ImagesArgs>),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a CA (ca.crt, ca.key) and a serving certificate (tls.crt, tls.key) into a directory.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// DNS names of the serving certificate.
        #[arg(long = "dns", value_name = "NAME", num_args = 1..)]
        dns: Vec<String>,
        /// IP addresses of the serving certificate.
        #[arg(long = "ip", value_name = "IP", num_args = 1..)]
        ips: Vec<std::net::IpAddr>,
        /// Replace certificates already in the directory.
        #[arg(long)]
        force: bool,
    },
}

fn certs_command(command: CertsCommand) -> Result<String, String> {
    let CertsCommand::Init {
        out,
        dns,
        ips,
        force,
    } = command;
    let names: Vec<String> = dns
        .into_iter()
        .chain(ips.iter().map(|ip| ip.to_string()))
        .collect();
    if names.is_empty() {
        return Err("give at least one --dns NAME or --ip IP".into());
    }
    berth::tls::write_new_cert_set(&out, &names, force).map_err(|e| e.to_string())?;
    Ok(format!(
        "wrote ca.crt, ca.key, tls.crt and tls.key for {} to {}\nclients trust {}\n",
        names.join(", "),
        out.display(),
        out.join(berth::tls::CA_CERT).display()
    ))
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Compile a policy and report its errors (exit 1) or a summary.
    Check {
        /// The policy YAML file.
        file: PathBuf,
    },
    /// Show the decision on an image, the validate and mutate responses to a whole AdmissionReview, or an access
    /// decision (--subject, --action, --repository).
    Eval {
        /// The policy YAML file.
        file: PathBuf,
        /// An image reference as a pod would write it.
        #[arg(long, required_unless_present_any = ["review", "subject"], conflicts_with_all = ["review", "subject"])]
        image: Option<String>,
        /// Who asks: user:<name>, serviceaccount:<namespace>/<name>, node-proxy or anonymous.
        #[arg(long, conflicts_with = "review", requires_all = ["action", "repository"])]
        subject: Option<String>,
        /// A group of the ServiceAccount besides those every ServiceAccount has (repeatable).
        #[arg(long = "group", value_name = "GROUP", requires = "subject")]
        groups: Vec<String>,
        /// What it does: pull, push or delete.
        #[arg(long, requires = "subject")]
        action: Option<String>,
        /// The repository it does it to (team-a/app).
        #[arg(long, requires = "subject")]
        repository: Option<String>,
        /// The namespace the pod would be in.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// An AdmissionReview JSON file (as the API server would send it).
        #[arg(long, value_name = "REVIEW.json")]
        review: Option<PathBuf>,
        /// berth's own namespace (never validated nor mutated).
        #[arg(long, default_value = "berth-system")]
        berth_namespace: String,
    },
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn policy_command(command: PolicyCommand) -> Result<String, String> {
    match command {
        PolicyCommand::Check { file } => {
            debug::check(&read(&file)?).map_err(|e| format!("{}: {e}", file.display()))
        }
        PolicyCommand::Eval {
            file,
            image,
            subject,
            groups,
            action,
            repository,
            namespace,
            review,
            berth_namespace,
        } => {
            let policy =
                Policy::from_yaml(&read(&file)?).map_err(|e| format!("{}: {e}", file.display()))?;
            if let (Some(subject), Some(action), Some(repository)) = (subject, action, repository) {
                return debug::eval_access(
                    &policy,
                    &subject,
                    &groups,
                    &action,
                    &repository,
                    &berth_namespace,
                )
                .map_err(|e| e.to_string());
            }
            match (image, review) {
                (Some(image), _) => Ok(debug::eval_image(
                    &policy,
                    &image,
                    &namespace,
                    &berth_namespace,
                )),
                (None, Some(review)) => {
                    debug::eval_review(&policy, &read(&review)?, &berth_namespace)
                        .map(|out| out + "\n")
                        .map_err(|e| format!("{}: {e}", review.display()))
                }
                (None, None) => Err("give --image or --review".into()),
            }
        }
    }
}

/// Prints what a command produced, or its error, and turns that into the exit code.
fn exit<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match Config::load(&args, &|name| std::env::var(name).ok()) {
            Ok(config) => exit(
                actix_web::rt::System::new()
                    .block_on(berth::server::serve(config))
                    .map(|()| String::new()),
            ),
            Err(e) => {
                eprintln!("berth: {e}");
                ExitCode::from(2)
            }
        },
        Command::NodeProxy(args) => exit(
            actix_web::rt::System::new()
                .block_on(berth::node_proxy::run(args))
                .map(|()| String::new()),
        ),
        Command::Certs(command) => exit(certs_command(command)),
        Command::Policy(command) => exit(policy_command(command)),
        Command::Events(args) => exit(
            berth::events::client::events(&args, &mut std::io::stdout().lock())
                .map(|()| String::new()),
        ),
        Command::Images(args) => exit(
            berth::events::client::images(&args, &mut std::io::stdout().lock())
                .map(|()| String::new()),
        ),
    }
}
