"""A throw-away single-node Slurm cluster for the tests: munged, slurmctld and slurmd in a temporary folder.

`python tests/slurm/cluster.py` starts one, prints the SLURM_CONF to export, and stops it on Ctrl-C.
The tests use `SlurmCluster` through a session fixture (tests/test_slurm.py)."""
import ctypes, os, shutil, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

PACKAGES = ('slurm-wlm', 'munge')
DAEMONS = ('munged', 'slurmctld', 'slurmd')


class ClusterUnavailable(RuntimeError):
    "Slurm cannot be started here (no packages and no apt, not root, a daemon that does not come up)."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _die_with_parent():
    "In a daemon about to start: get SIGTERM when the process that started it dies, even by SIGKILL (Linux)."
    try: ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
    except OSError: pass


def ensure_packages(log=print) -> None:
    "Install slurm-wlm and munge with apt where they are missing (needs root and apt)."
    if all(shutil.which(d) for d in DAEMONS): return
    if not shutil.which('apt-get'): raise ClusterUnavailable('Slurm is not installed and there is no apt-get to install it')
    if os.geteuid() != 0: raise ClusterUnavailable('Slurm is not installed and installing it needs root')
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    cmd = ['apt-get', 'install', '-y', '-q', '--no-install-recommends', *PACKAGES]
    log(f'installing {" ".join(PACKAGES)} with apt-get')
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(['apt-get', 'update', '-q'], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0: raise ClusterUnavailable(f'apt-get install {" ".join(PACKAGES)} failed: {r.stderr.strip()[-500:]}')
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing: raise ClusterUnavailable(f'{", ".join(missing)} not found after installing {" ".join(PACKAGES)}')


SLURM_CONF = """\
ClusterName=ca-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# quick reactions for tests: signals escalate to SIGKILL after 2 s, finished jobs stay visible 5 min
KillWait=2
MinJobAge=300
InactiveLimit=0
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    "munged + slurmctld + slurmd owned by this process, configured under `root`; `stop()` ends exactly those."
    def __init__(self, root=None, partition='debug', cpus=None):
        self.root = Path(root or tempfile.mkdtemp(prefix='slurm-test-')).resolve()
        self.partition, self.cpus = partition, cpus or os.cpu_count() or 1
        self.host = socket.gethostname()
        self.node = self.host.split('.')[0]
        self.conf = self.root/'slurm.conf'
        self.procs = {}   # daemon name -> Popen

    @property
    def env(self) -> dict:
        "Environment for Slurm client commands (sbatch, squeue, scontrol, scancel) talking to this cluster."
        return {**os.environ, 'SLURM_CONF': str(self.conf)}

    def _write_config(self):
        for d in ('munge', 'state', 'spool', 'log'): (self.root/d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root/'munge', 0o700)
        key = self.root/'munge'/'munge.key'
        key.write_bytes(os.urandom(1024)); os.chmod(key, 0o600)
        self.conf.write_text(SLURM_CONF.format(root=self.root, host=self.host, node=self.node, cpus=self.cpus,
                                               partition=self.partition, ctld_port=_free_port(), slurmd_port=_free_port()))

    def _start(self, name, args):
        log = open(self.root/'log'/f'{name}.out', 'ab')
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
        log.close()

    def _check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.root/'log'/f'{name}.out').read_text(errors='replace')[-1500:]
                logf = self.root/'log'/f'{name}.log'
                if logf.exists(): tail += logf.read_text(errors='replace')[-1500:]
                raise ClusterUnavailable(f'{name} exited with status {p.returncode}:\n{tail}')

    def run(self, *args, check=True, timeout=30) -> str:
        "Run a Slurm client command against this cluster; return its stdout."
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0: raise RuntimeError(f'{" ".join(args)}: {r.stderr.strip()}')
        return r.stdout

    def node_state(self) -> str:
        r = subprocess.run(['sinfo', '-h', '-n', self.node, '-o', '%T'], env=self.env, capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ''

    def start(self, timeout=60.0):
        "Write the configuration, start the three daemons in the foreground, wait until the node is idle."
        ensure_packages()
        if os.geteuid() != 0: raise ClusterUnavailable('the test cluster runs its daemons as root (SlurmUser=root)')
        self._write_config()
        m = self.root/'munge'
        try:
            self._start('munged', ['munged', '--foreground', '--force', f'--socket={m}/munge.socket', f'--key-file={m}/munge.key',
                                   f'--pid-file={m}/munged.pid', f'--log-file={self.root}/log/munged.log', f'--seed-file={m}/munge.seed'])
            self._wait(lambda: (m/'munge.socket').exists(), 20, 'munged to open its socket')
            self._start('slurmctld', ['slurmctld', '-D', '-i', '-f', str(self.conf)])
            self._wait(lambda: subprocess.run(['scontrol', 'ping'], env=self.env, capture_output=True).returncode == 0, timeout, 'slurmctld to answer')
            self._start('slurmd', ['slurmd', '-D', '-f', str(self.conf), '-N', self.node])
            self._wait(lambda: self.node_state() == 'idle', timeout, f'node {self.node} to become idle')
        except BaseException:
            self.stop(); raise
        return self

    def _wait(self, cond, timeout, what):
        t0 = time.time()
        while time.time() - t0 < timeout:
            self._check_alive()
            if cond(): return
            time.sleep(0.3)
        raise ClusterUnavailable(f'timed out after {timeout:.0f} s waiting for {what} (logs in {self.root/"log"})')

    def job_pids(self) -> list:
        "This cluster's slurmstepd processes (their environment names its SLURM_CONF) and their descendants."
        procs = {}   # pid -> (parent pid, command name)
        for stat in Path('/proc').glob('[0-9]*/stat'):
            try: text = stat.read_text()
            except OSError: continue
            procs[int(stat.parent.name)] = (int(text[text.rindex(')') + 2:].split()[1]), text[text.index('(') + 1:text.rindex(')')])
        def ours(pid):
            try: return f'SLURM_CONF={self.conf}'.encode() in Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
            except OSError: return False
        found = {pid for pid, (_, name) in procs.items() if name == 'slurmstepd' and ours(pid)}
        while True:
            children = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
            if not children: return sorted(found)
            found |= children

    def stop(self, timeout=30.0):
        "Cancel every job, then stop slurmd, slurmctld and munged (the processes this object started), by PID."
        if self.procs.get('slurmctld') and self.procs['slurmctld'].poll() is None:
            subprocess.run(['scancel', '--full', '-u', str(os.geteuid())], env=self.env, capture_output=True, timeout=30)
            t0 = time.time()
            while time.time() - t0 < timeout and self.run('squeue', '-h', check=False).strip(): time.sleep(0.5)
        for name in ('slurmd', 'slurmctld', 'munged'):
            p = self.procs.get(name)
            if p is None or p.poll() is not None: continue
            p.send_signal(signal.SIGTERM)
            try: p.wait(timeout)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
        for pid in self.job_pids():   # job steps left behind by a daemon that died early
            try: os.kill(pid, signal.SIGKILL)
            except OSError: pass

    def __enter__(self): return self.start()
    def __exit__(self, *a): self.stop()


if __name__ == '__main__':
    def _interrupt(*_): raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _interrupt)   # `kill` stops the cluster as Ctrl-C does
    c = SlurmCluster(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        c.start()
        print(f'Slurm is up (partition {c.partition}, {c.cpus} CPUs). In another shell:\n  export SLURM_CONF={c.conf}\n'
              'Ctrl-C stops it.', flush=True)
        while True: signal.pause()
    except KeyboardInterrupt: pass
    except ClusterUnavailable as e:
        print(f'error: {e}', file=sys.stderr); sys.exit(2)
    finally:
        c.stop()
