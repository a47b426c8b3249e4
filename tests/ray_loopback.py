"""Ray's own command line (`ray start ...`), with 127.0.0.1 kept as 127.0.0.1, for the tests' local cluster.

`ray start --node-ip-address 127.0.0.1` and `--address 127.0.0.1:PORT` replace the loopback address with this
machine's outward IP (Ray wants nodes of a real cluster reachable from the others), and with a non-loopback node IP
Ray's servers listen on every interface. The tests must stay on loopback, so this launcher keeps the address as given;
with 127.0.0.1 as node IP, Ray binds its servers to 127.0.0.1 only. Usage: python tests/ray_loopback.py start ..."""
import sys
import ray._private.services as services

services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main  # noqa: E402  (after the patch: it calls the patched function at run time)

if __name__ == "__main__":
  sys.exit(main())
