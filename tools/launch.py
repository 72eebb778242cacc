"""Run a training command on MXNet's parameter server: a scheduler, servers and workers.

    tools/launch.py -n 2 -s 1 -- .venv/bin/python train_model.py --kv-store dist_sync ...
    tools/launch.py -n 4 -s 2 -H hosts.txt -- .venv/bin/python train_model.py --kv-store dist_sync

Without -H every process runs here and talks over 127.0.0.1 only. With -H, servers and workers
are placed round-robin on the hosts of the file (one per line, '#' comments) and started over ssh
in the same directory (a shared or identical checkout is assumed); the scheduler runs here.
Each process gets the DMLC_* environment; the scheduler and servers are
`python -c "import mxnet"` (MXNet turns itself into a server when DMLC_ROLE says so). The launcher
exits 0 when every worker succeeded, and otherwise (or at --timeout) stops every process and exits
non-zero, naming the one that failed. It replaces MXNet's tools/launch.py, whose local mode is
broken on Python >= 3.9 and listens on every interface.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
EXIT_TIMEOUT = 124
# After the workers are done the scheduler and servers shut down by themselves; give them this
# long before stopping them.
SHUTDOWN_GRACE_S = 20.0


DIST_KV_STORES = ("dist_sync", "dist_device_sync", "dist_async")
TRAINING_SCRIPTS = ("train_model.py", "train_imagenet.py")


def kv_store_problem(command):
    """Why `command` would not train as one distributed job (None when it would): every worker
    of a non-dist kvstore trains alone, into the same checkpoints and log."""
    value = None
    for i, arg in enumerate(command):
        if arg == "--kv-store" and i + 1 < len(command):
            value = command[i + 1]
        elif arg.startswith("--kv-store="):
            value = arg.split("=", 1)[1]
    trains = any(os.path.basename(arg) in TRAINING_SCRIPTS for arg in command)
    if value is None and not trains:
        return None
    if value in DIST_KV_STORES:
        return None
    given = f"--kv-store {value}" if value else "no --kv-store (the default is 'device')"
    return (f"the worker command has {given}: each worker would train on its own into the "
            f"same checkpoints; give --kv-store {' / '.join(DIST_KV_STORES)}")


def free_port(host=LOOPBACK):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_hosts(path):
    try:
        with open(path, encoding="utf-8") as f:
            hosts = [line.split("#", 1)[0].strip() for line in f]
    except OSError as err:
        raise SystemExit(f"launch.py: error: -H {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"launch.py: error: -H {path}: not a text file of host names") \
            from None
    hosts = [h for h in hosts if h]
    if not hosts:
        raise SystemExit(f"launch.py: error: -H {path} lists no hosts")
    return hosts


def plan(args, command, port, scheduler_host):
    """[(label, role, host or None for here, env additions, argv)] for every process."""
    common = {"DMLC_NUM_WORKER": str(args.num_workers), "DMLC_NUM_SERVER": str(args.num_servers),
              "DMLC_PS_ROOT_PORT": str(port)}
    server_argv = [args.python, "-c", "import mxnet"]
    if args.hostfile is None:
        common["DMLC_PS_ROOT_URI"] = LOOPBACK
        host_of = lambda i: None  # noqa: E731  (every process runs here)
    else:
        hosts = read_hosts(args.hostfile)
        common["DMLC_PS_ROOT_URI"] = scheduler_host
        host_of = lambda i: hosts[i % len(hosts)]  # noqa: E731
    procs = [("scheduler", "scheduler", None, common["DMLC_PS_ROOT_URI"], server_argv)]
    procs += [(f"server {i}", "server", host_of(i), None, server_argv)
              for i in range(args.num_servers)]
    procs += [(f"worker {i}", "worker", host_of(args.num_servers + i), None, command)
              for i in range(args.num_workers)]
    out = []
    for label, role, host, node_host, argv in procs:
        env = dict(common, DMLC_ROLE=role)
        env["DMLC_NODE_HOST"] = node_host or host or LOOPBACK
        out.append((label, role, host, env, argv))
    return out


def popen_argv(host, env, argv, ssh):
    """The local argv that starts `argv` with `env` here or, over ssh, on `host`."""
    if host is None:
        return argv
    remote = " ".join([f"cd {shlex.quote(os.getcwd())} &&", "env"]
                      + [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
                      + [shlex.quote(a) for a in argv])
    return shlex.split(ssh) + [host, remote]


def _relay(label, stream):
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"[{label}] {line.decode(errors='replace')}")
        sys.stdout.flush()


class Cluster:
    def __init__(self, processes, ssh):
        self.processes, self.ssh = processes, ssh
        self.running = []

    def start(self):
        for label, role, host, env, argv in self.processes:
            child_env = dict(os.environ, **env)
            proc = subprocess.Popen(popen_argv(host, env, argv, self.ssh), env=child_env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            threading.Thread(target=_relay, args=(label, proc.stdout), daemon=True).start()
            self.running.append((label, role, proc))

    def stop(self):
        """SIGTERM every process group still alive, then SIGKILL what is left."""
        alive = [p for _, _, p in self.running if p.poll() is None]
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
            for proc in alive:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while time.time() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)
            alive = [p for p in alive if p.poll() is None]

    def wait(self, timeout):
        """0 when every worker exits 0; otherwise a non-zero code and the reason."""
        deadline = time.time() + timeout
        workers_done_at = None
        while True:
            for label, role, proc in self.running:
                code = proc.poll()
                if code not in (None, 0):
                    return 1, f"{label} exited with status {code}"
            states = [(role, proc.poll()) for _, role, proc in self.running]
            if all(code == 0 for role, code in states if role == "worker"):
                if all(code == 0 for _, code in states):
                    return 0, "all processes finished"
                workers_done_at = workers_done_at or time.time()
                if time.time() - workers_done_at > SHUTDOWN_GRACE_S:
                    return 0, "workers finished; stopped the scheduler and servers"
            if time.time() > deadline:
                return EXIT_TIMEOUT, f"timed out after {timeout:g} s"
            time.sleep(0.1)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Launch scheduler, servers and workers for --kv-store dist_* training.",
        usage="%(prog)s [-n WORKERS] [-s SERVERS] [-H HOSTFILE] [options] -- COMMAND...")
    parser.add_argument("-n", "--num-workers", type=int, default=2, help="number of workers")
    parser.add_argument("-s", "--num-servers", type=int, default=1, help="number of servers")
    parser.add_argument("-H", "--hostfile", help="hosts to start servers and workers on over "
                                                 "ssh (default: all here, on 127.0.0.1)")
    parser.add_argument("--scheduler-host", help="address of this machine as the hosts of -H "
                                                 "reach it (default: this host's name)")
    parser.add_argument("--port", type=int, help="scheduler port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0,
                        help="stop everything and exit 124 after this many seconds")
    parser.add_argument("--ssh", default="ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
                        help="ssh command used for -H")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter (with MXNet) that runs the scheduler and servers")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be started, start nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the worker command")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no worker command given (put it after --)")
    problem = kv_store_problem(command)
    if problem:
        parser.error(problem)
    if args.num_workers < 1 or args.num_servers < 1:
        parser.error("-n and -s must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    port = args.port or (free_port() if args.hostfile is None else 9091)
    scheduler_host = args.scheduler_host or (socket.getfqdn() if args.hostfile else LOOPBACK)
    processes = plan(args, command, port, scheduler_host)
    if args.dry_run:
        for label, _, host, env, argv in processes:
            where = host or "here"
            print(f"{label} ({where}): "
                  + " ".join(f"{k}={v}" for k, v in sorted(env.items())) + " "
                  + " ".join(shlex.quote(a) for a in popen_argv(host, env, argv, args.ssh)))
        return 0
    cluster = Cluster(processes, args.ssh)
    # Stop the whole cluster on Ctrl-C or a kill of the launcher, not only the launcher.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cluster.start()
        code, reason = cluster.wait(args.timeout)
    except KeyboardInterrupt:
        code, reason = 130, "interrupted"
    finally:
        cluster.stop()
    print(f"launch.py: {reason}", file=sys.stderr if code else sys.stdout, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
