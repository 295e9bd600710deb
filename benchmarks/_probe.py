import time, tempfile, shutil, resource, sys
from pathlib import Path
from benchmarks.bench_dataset import make_pictures, naive_hashes, LIMITS, WORK, bench_hamming
from core.dataset.audit import inspect_all, list_files
if __name__ == "__main__":
    WORK.mkdir(exist_ok=True, parents=True)
    folder = Path(tempfile.mkdtemp(dir=WORK))
    make_pictures(folder, 96)
    files = list_files(folder)
    if sys.argv[1] == "ham": bench_hamming(100000)
    print("maxrss MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, open("/proc/self/status").read().split("VmRSS:")[1].split("\n")[0])
    inspect_all(files[:4], LIMITS, 2); naive_hashes(files[:4])
    for label, f in [("pool cold", lambda: inspect_all(files, LIMITS, 2)), ("pool warm", lambda: inspect_all(files, LIMITS, 2)), ("naive", lambda: naive_hashes(files))]:
        t = time.perf_counter(); f(); print(label, round(time.perf_counter() - t, 3))
    shutil.rmtree(folder)
