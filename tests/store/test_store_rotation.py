"""KEK rotation while reads run (S-35): no failed read, every DEK re-wrapped, old KEK removable."""

from __future__ import annotations

import random
import threading

from agent.keys import load_keyring
from agent.store import Store, crypto
from tests.store.storehelp import commit_docs, make_doc, open_store


def test_rotate_while_a_reader_loop_runs_then_old_kek_file_is_gone_and_everything_reads(config) -> None:
    store = open_store(config)
    ids: list[str] = []
    for batch in range(10):
        ids += commit_docs(store, [make_doc(batch * 100 + i) for i in range(100)], path=f"/b{batch}").doc_ids
    store.quarantine_add(b"x", {"rules": ["R-003"]}, "q.xml")
    failures: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        rng = random.Random(1)
        while not stop.is_set():
            try:
                doc = store.get_current(rng.choice(ids))
                assert doc is not None
                reads += 1
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    old_kek = store.keyring.keks["kek-1"]
    try:
        result = store.rotate_kek(batch=50)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [] and reads > 0
    assert result.new_kek_id == "kek-2" and result.retired == ["kek-1"]
    assert store.kek_usage() == {"kek-2": result.rewrapped}
    assert not (config.keys_dir / "kek-1.key").exists()
    assert old_kek not in crypto._kek_aeads  # no cached cipher context outlives the shredded key
    # A writer in the same process now wraps under kek-2.
    commit_docs(store, [make_doc(5000)], path="/after")
    assert set(store.kek_usage()) == {"kek-2"}
    store.close()
    # Fresh process view: only kek-2 on disk, every record still decrypts.
    again = Store.open(config, keyring=load_keyring(config.keys_dir))
    try:
        assert again.verify(full=True).ok
        assert all(again.get_current(i) is not None for i in ids[:50])
    finally:
        again.close()


def test_rotation_by_another_process_is_picked_up_by_a_running_store(config) -> None:
    daemon = open_store(config)
    doc_id = commit_docs(daemon, [make_doc(1)]).doc_ids[0]
    cli = open_store(config)  # a second Store with its own keyring = the `keys rotate` process
    cli.rotate_kek()
    cli.close()
    assert daemon.get_current(doc_id) is not None  # loads kek-2 from its file on demand
    commit_docs(daemon, [make_doc(2)], path="/later")  # must wrap under kek-2, not the retired kek-1
    assert set(daemon.kek_usage()) == {"kek-2"}
    daemon.close()


def test_old_kek_still_used_by_a_backup_in_backup_dir_is_kept(config) -> None:
    store = open_store(config)
    commit_docs(store, [make_doc(1)])
    store.backup(config.backup.dir / "nightly.bak")
    result = store.rotate_kek()
    assert result.retired == [] and result.kept == ["kek-1"]
    assert (config.keys_dir / "kek-1.key").exists()
    store.close()


def test_a_backup_written_outside_backup_dir_keeps_its_kek_for_the_backup_retention(config, tmp_path) -> None:
    """security.md §5: a KEK is retired only when no backup inside the backup retention uses it —
    also a `backup --out` written anywhere else, which must stay restorable after `keys rotate`."""
    from agent.clock import FakeClock
    from agent.store.backup import verify_backup, write_backup

    clock = FakeClock()
    store = open_store(config, clock=clock)
    try:
        commit_docs(store, [make_doc(i) for i in range(5)], path="/x")
        elsewhere = tmp_path / "usb"
        elsewhere.mkdir()
        write_backup(store, elsewhere / "manual.bak")
        result = store.rotate_kek(batch=50)
        assert result.retired == [] and (config.keys_dir / "kek-1.key").exists()
        keyring = load_keyring(config.keys_dir)
        assert verify_backup(elsewhere / "manual.bak", keyring, config.data_dir / "tmp")["kek_id"] == "kek-1"
        clock.advance((store.backup_keep_days + 2) * 86400)  # past the backup retention
        assert store.retire_unused_keks()[0] == ["kek-1"]
        assert not (config.keys_dir / "kek-1.key").exists()
    finally:
        store.close()
