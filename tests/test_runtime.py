from simclr.runtime import derive_seed


def test_derive_seed_is_stable_distinct_and_bounded():
    assert derive_seed(3, 7) == derive_seed(3, 7)
    seeds = {derive_seed(3, 7), derive_seed(3, 7, 0), derive_seed(3, 7, 0, 0), derive_seed(7, 3)}
    assert len(seeds) == 4  # trailing zeros and order count
    assert derive_seed(3, 7 + 2**32) != derive_seed(3, 7, 1)  # fixed-width words
    big = derive_seed(2**70, -5)  # any integers: no overflow
    assert all(0 <= s < 2**63 for s in (*seeds, big))


def test_a_process_with_an_unfinished_loader_still_exits():
    # Loader workers ignore SIGTERM (so a scheduler's signal to the group leaves the main
    # process time to save), and multiprocessing ends daemonic workers at exit with SIGTERM and
    # waits: without the exit hook of simclr.runtime, this script never ended.
    import subprocess
    import sys

    script = (
        "from torch.utils.data import DataLoader\n"
        "from simclr.runtime import ignore_stop_signals\n"
        "loader = DataLoader(range(64), batch_size=2, num_workers=2,"
        " worker_init_fn=ignore_stop_signals)\n"
        "LEFT_OPEN = iter(loader)\n"
        "next(LEFT_OPEN)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
