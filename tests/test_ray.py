"""--ray on a real Ray cluster: a head node and a worker node started with Ray's CLI on 127.0.0.1 (each its own
processes: GCS, raylets, object stores, workers), torn down at the end even when a test fails. Checks: one record per
configuration with the test accuracy of the in-process run, every Ray server listening on 127.0.0.1 only, a worker
killed mid-run is retried and the suite completes, Ctrl-C leaves no job or worker running, a local `--ray` instance
is stopped after the command."""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path
import pytest
from tests.test_cli import TINY_SUITE, explorer, records

ROOT = Path(__file__).resolve().parents[1]
# nothing reports outside (the explorer sets the same for loopback addresses); token authentication with a token of
# this test session's own, given to every node and driver (Ray would otherwise create and use ~/.ray/auth_token)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
# a plain driver (the checks below) keeps 127.0.0.1 with Ray's multi-node switch off (see explorer.ray_runner.import_ray)
DRIVER_ENV = {**RAY_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LONG_SUITE = """
[mlp.defaults]
width = 16
steps = 400
batch = 16
eval_every = 100
[[mlp.runs]]
name = "baseline"
category = "baseline"
[[mlp.runs]]
name = "lr-high"
category = "learning_rate"
lr_max = 0.01
[[mlp.runs]]
name = "batch-8"
category = "batch_size"
batch = 8
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_tree(roots: set[int]) -> dict[int, str]:
  """pid -> command line of every live process in these process groups or below their processes."""
  procs = {}
  for d in Path("/proc").iterdir():
    if not d.name.isdigit(): continue
    try:
      fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
      procs[int(d.name)] = (int(fields[1]), int(fields[2]), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    except (OSError, IndexError, ValueError): continue
  ours = {pid for pid, (_, pgid, _) in procs.items() if pgid in roots}
  while True:
    more = {pid for pid, (ppid, _, _) in procs.items() if ppid in ours} - ours
    if not more: break
    ours |= more
  return {pid: procs[pid][2] for pid in ours}


def listening_addresses(pids) -> list[str]:
  """The local addresses of the TCP sockets these processes listen on."""
  inodes = set()
  for pid in pids:
    try: inodes |= {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError: continue
  out = []
  for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
    for line in Path(table).read_text().splitlines()[1:]:
      f = line.split()
      if f[3] == "0A" and f"socket:[{f[9]}]" in inodes:  # 0A: LISTEN
        raw = bytes.fromhex(f[1].split(":")[0])
        ip = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6,
                              b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
        out.append(ip)
  return out


class Cluster:
  def __init__(self):
    self.temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths must stay under 107 chars
    self.port = free_port()
    self.address = f"127.0.0.1:{self.port}"
    self.groups: set[int] = set()

  def ray(self, *args: str) -> None:
    """One `ray start` in its own process group: the daemons it leaves behind stay in that group (teardown kills it)."""
    p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ray_loopback.py"), *args], start_new_session=True,
                         env={**os.environ, **RAY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.groups.add(p.pid)
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 0, out[-3000:]

  def start(self) -> None:
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", str(200 << 20)]
    self.ray("start", "--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir", str(self.temp / "h"),
             "--ray-client-server-port", str(free_port()), *common)
    self.ray("start", "--address", self.address, "--temp-dir", str(self.temp / "w"), *common)

  def processes(self) -> dict[int, str]: return process_tree(self.groups)

  def workers(self, title: str = "ray::TrainerWorker") -> list[int]:
    return [pid for pid, cmd in self.processes().items() if cmd.startswith(title)]

  def stop(self) -> None:
    """Only this cluster's processes: its process groups and everything they started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
      for pid in self.processes():
        try: os.kill(pid, sig)
        except ProcessLookupError: pass
      deadline = time.monotonic() + 10
      while self.processes() and time.monotonic() < deadline: time.sleep(0.2)
    shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
  pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray,test]'")
  c = Cluster()
  try:
    c.start()
    yield c
  finally:
    c.stop()
    assert not c.processes(), "the test cluster left processes behind"


def check_jobs(address: str) -> dict:
  """Jobs still alive and TrainerWorker actors still alive, seen by a fresh driver (besides that driver itself)."""
  code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); from ray._private import state; "
          "print(json.dumps({'jobs': sum(not j['IsDead'] for j in state.jobs()) - 1, "
          "'actors': sum(a['State'] != 'DEAD' and a['ActorClassName'].endswith('TrainerWorker') for a in state.actors().values())}))" % address)
  r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **DRIVER_ENV}, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def ray_explorer(args, tmp_path, data_dir, suite=TINY_SUITE, wait=True):
  return explorer(["mlp", *args], tmp_path, env=RAY_ENV, data_dir=data_dir, suite=suite, wait=wait)


def test_ray_suite_matches_in_process_run_and_stays_on_loopback(cluster, tmp_path, data_dir):
  local = tmp_path / "local"
  local.mkdir()
  r = explorer(["mlp"], local, data_dir=data_dir)
  assert r.returncode == 0, r.stderr
  r = ray_explorer(["--ray", cluster.address], tmp_path, data_dir)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  on_ray, in_process = records(tmp_path), records(local)
  files = list((tmp_path / "results").glob("runs/*/*/*/*.json"))
  assert len(files) == len(in_process) == 4  # exactly one record per configuration
  for name, record in in_process.items():
    assert on_ray[name]["status"] == "done"
    assert on_ray[name]["metrics"]["test_acc"] == record["metrics"]["test_acc"], name
    assert on_ray[name]["config_hash"] == record["config_hash"]
  # the two nodes each ran a worker; same-shape runs reused compiled steps (4 runs, 2 shapes, 2 workers: at most 3 builds)
  assert "2 node(s); 2 worker(s)" in r.stdout
  built = int(re.search(r"compiled steps built (\d+) times for 4 runs", r.stdout).group(1))
  assert 2 <= built <= 3, r.stdout
  assert (tmp_path / "results" / "index.md").exists()
  # resume: nothing left to train
  r = ray_explorer(["--ray", cluster.address], tmp_path, data_dir)
  assert r.returncode == 0 and "all 4 runs already finished" in r.stdout, r.stdout + r.stderr
  # every Ray process of the cluster listens on 127.0.0.1 only
  addresses = listening_addresses(cluster.processes())
  assert addresses and all(a in ("127.0.0.1", "::ffff:127.0.0.1") for a in addresses), addresses


def test_killed_worker_run_is_retried_and_suite_completes(cluster, tmp_path, data_dir):
  p = ray_explorer(["--ray", cluster.address], tmp_path, data_dir, suite=LONG_SUITE, wait=False)
  try:
    deadline, killed = time.monotonic() + 240, None
    while killed is None and time.monotonic() < deadline and p.poll() is None:
      if running := cluster.workers("ray::TrainerWorker.run"):  # a worker inside a run (Ray titles it by the method)
        killed = running[0]
        os.kill(killed, signal.SIGKILL)
      time.sleep(0.05)
    out, err = p.communicate(timeout=400)
  finally:
    if p.poll() is None: p.kill()
  assert killed, "no worker was seen training"
  assert p.returncode == 0, out[-3000:] + err[-3000:]
  assert "died during" in out and "retrying" in out, out
  recs = records(tmp_path)
  assert sorted(recs) == ["baseline", "batch-8", "lr-high"] and len(list((tmp_path / "results").glob("runs/*/*/*/*.json"))) == 3
  assert all(r["status"] == "done" for r in recs.values()), {n: r["status"] for n, r in recs.items()}
  assert sorted(r["attempts"] for r in recs.values()) == [1, 1, 2]
  assert not list((tmp_path / "results").glob("runs/*/*/*/*.claim"))


def test_ctrl_c_stops_the_clusters_work(cluster, tmp_path, data_dir):
  suite = LONG_SUITE.replace("steps = 400", "steps = 100000")
  p = ray_explorer(["--ray", cluster.address], tmp_path, data_dir, suite=suite, wait=False)
  try:
    deadline = time.monotonic() + 240
    while not cluster.workers("ray::TrainerWorker.run") and time.monotonic() < deadline and p.poll() is None: time.sleep(0.1)
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
  finally:
    if p.poll() is None: p.kill()
  assert p.returncode == 130, out[-3000:] + err[-3000:]
  assert "re-run the same command to resume" in err
  statuses = [r["status"] for r in records(tmp_path).values()]
  assert statuses and set(statuses) == {"interrupted"}, statuses
  assert not list((tmp_path / "results").glob("runs/*/*/*/*.claim"))
  deadline = time.monotonic() + 30
  while cluster.workers() and time.monotonic() < deadline: time.sleep(0.5)
  assert not cluster.workers(), "a worker process is still running"
  assert check_jobs(cluster.address) == {"jobs": 0, "actors": 0}


def test_no_node_fits_the_resources_is_one_line(cluster, tmp_path, data_dir):
  r = ray_explorer(["--ray", cluster.address, "--ray-gpus", "1"], tmp_path, data_dir)
  assert r.returncode == 2, r.stdout + r.stderr
  assert "no node of the Ray cluster has 1 CPU and 1 GPU for one run" in r.stderr
  assert not records(tmp_path)


def test_unreachable_cluster_is_one_line(tmp_path, data_dir):
  pytest.importorskip("ray")
  r = ray_explorer(["--ray", f"127.0.0.1:{free_port()}"], tmp_path, data_dir)
  assert r.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in r.stderr, r.stdout + r.stderr
  assert not records(tmp_path)


def test_local_ray_instance_is_started_and_stopped(tmp_path, data_dir):
  pytest.importorskip("ray")
  temp = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
  try:
    r = explorer(["mlp", "--ray", "--max-steps", "3"], tmp_path, env={**RAY_ENV, "RAY_TMPDIR": str(temp)}, data_dir=data_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "a local Ray instance" in r.stdout
    assert sorted(records(tmp_path)) == ["baseline", "batch-8", "lr-high", "lr-low"]
    # its GCS, raylet and helpers carry its temp folder (RAY_TMPDIR) on their command lines
    leftover = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and str(temp).encode() in _cmdline(d)]
    assert not leftover, "the local Ray instance is still running"
  finally:
    shutil.rmtree(temp, ignore_errors=True)


def _cmdline(d: Path) -> bytes:
  try: return (d / "cmdline").read_bytes()
  except OSError: return b""


@pytest.mark.parametrize("args, expected", [
  (["--ray", "--workers", "2"], "with --ray the cluster's size sets the parallelism"),
  (["--ray", "--ray-cpus", "0"], "--ray-cpus must be > 0"),
  (["--ray-gpus", "0.5"], "--ray-cpus/--ray-gpus need --ray"),
])
def test_bad_ray_options_are_one_line(tmp_path, args, expected):
  r = explorer(["mlp", *args], tmp_path)
  assert r.returncode == 2 and expected in r.stderr, r.stderr


def test_without_ray_installed_ray_says_how_to_install(tmp_path, data_dir):
  fake = tmp_path / "noray" / "ray"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
  r = explorer(["mlp", "--ray"], tmp_path, env={"PYTHONPATH": str(fake.parent)}, data_dir=data_dir)
  assert r.returncode == 2, r.stdout + r.stderr
  assert r.stderr.strip().splitlines() == ["error: --ray needs Ray (No module named 'ray'); install it with: pip install -e '.[ray]'"]
