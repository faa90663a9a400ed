"""pcnet.experiments.chunks: content-keyed chunks, damaged files, where a CLI may write, shard parsing."""
import json
import os

import pytest

from pcnet.experiments import chunks, data


def _store(tmp_path, **kw):
    return chunks.ChunkStore(tmp_path, study="demo", config={"n": 2, **kw}, command="python -m demo")


def test_key_covers_config_job_and_input_files(tmp_path):
    st, job, inputs = _store(tmp_path), {"model": "t0", "block": 0}, {"decoders": "a" * 64}
    st.save(job, inputs, {"correct": [True]}, cpu_s=1.5, git="abc")
    assert st.load(job, inputs) == {"correct": [True]}
    assert st.record(job, inputs)["cpu_s"] == 1.5 and st.record(job, inputs)["git"] == "abc"
    assert st.load({"model": "t0", "block": 1}, inputs) is None          # another job
    assert st.load(job, {"decoders": "b" * 64}) is None                  # other weights: the chunk is stale
    assert _store(tmp_path, n=3).load(job, inputs) is None               # another configuration
    keys = {chunks.chunk_key(study="demo", config={"n": 2}, job=job, inputs=inputs),
            chunks.chunk_key(study="demo", config={"n": 2}, job=job, inputs={"decoders": "c" * 64}),
            chunks.chunk_key(study="other", config={"n": 2}, job=job, inputs=inputs)}
    assert len(keys) == 3


def test_input_digests_follow_the_file_bytes(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"one")
    first = chunks.input_digests({"w": f})["w"]
    f.write_bytes(b"two")  # re-saved: new bytes, new digest (the cache keys on size and mtime too)
    os.utime(f, ns=(1, 1))
    assert chunks.input_digests({"w": f})["w"] != first
    with pytest.raises(FileNotFoundError, match="missing; restore it"):
        chunks.input_digests({"w": tmp_path / "absent.pt"})


def test_a_chunk_is_accepted_only_for_the_job_whose_key_it_carries(tmp_path):
    """`fog.json` copied to `frost.json` (or any file renamed to another job's name) is refused, naming the file."""
    st, inputs = _store(tmp_path), {}
    fog = st.save("fog", inputs, {"correct": [True]})
    fog.replace(st.path("frost", inputs))
    with pytest.raises(chunks.ChunkError, match="another job .* copied or renamed.*delete it and rerun `python -m demo`"):
        st.load("frost", inputs)


@pytest.mark.parametrize("text, why", [("{\"result\": [", "not readable JSON"), ("[]", "not a chunk"),
                                       ("{\"key\": \"x\"}", "not a chunk"), ("\xff", "not readable JSON")])
def test_damaged_chunks_name_the_file_and_the_fix(tmp_path, text, why):
    st = _store(tmp_path)
    path = st.path("fog", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="latin-1")
    with pytest.raises(chunks.ChunkError, match=f"{path.name}.*{why}.*delete it"):
        st.load("fog", {})


def test_edited_chunk_fails_its_sha256(tmp_path):
    st = _store(tmp_path)
    path = st.save("fog", {}, {"correct": [True, False]})
    doc = json.loads(path.read_text())
    doc["result"]["correct"][1] = True
    path.write_text(json.dumps(doc))
    with pytest.raises(chunks.ChunkError, match="sha256"):
        st.load("fog", {})


def test_run_computes_once(tmp_path):
    st, calls = _store(tmp_path), []
    assert st.run("a", {}, lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert st.run("a", {}, lambda: calls.append(1) or {"v": 2}) == {"v": 1} and calls == [1]


def test_check_output_refuses_bad_targets_before_compute(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "data")
    (tmp_path / "data" / "results").mkdir(parents=True)
    committed = tmp_path / "data" / "results" / "ch5.json"
    with pytest.raises(ValueError, match="not the committed configuration.*scratch path"):
        chunks.check_output(committed, kind="file", committed=False)
    assert chunks.check_output(committed, kind="file", committed=True) == committed
    with pytest.raises(ValueError, match="is a folder; this command writes one result file"):
        chunks.check_output(tmp_path, kind="file", committed=True)
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(ValueError, match="is a file; this command writes into a folder"):
        chunks.check_output(tmp_path / "f.json", kind="dir", committed=True)
    with pytest.raises(ValueError, match="cannot create files"):
        chunks.check_output(tmp_path / "f.json" / "x.json", kind="file", committed=True)
    assert chunks.check_output(tmp_path / "new" / "x.json", kind="file", committed=False).name == "x.json"


@pytest.mark.parametrize("text", ["abc", "1", "1/2/3", "2/2", "-1/2", ""])
def test_bad_shards_say_the_form(text):
    with pytest.raises(ValueError, match="I/N with 0 <= I < N"):
        chunks.parse_shard(text)


def test_good_shards():
    assert chunks.parse_shard("1/2") == (1, 2) and chunks.parse_shard(" 0 / 1 ") == (0, 1)


def test_reference_inputs_hash_the_weights_and_name_the_data():
    d = chunks.reference_inputs(backbone_seed=1, decoder_seed=0)
    assert set(d) >= {"backbone", "decoders", "fashion-mnist/t10k-images-idx3-ubyte"}
    assert d["backbone"] != chunks.reference_inputs(backbone_seed=2)["backbone"]


def test_a_smoke_run_keeps_its_chunks_out_of_the_committed_folder(tmp_path, monkeypatch):
    """The committed chunk folder holds committed configurations only (a smoke run once wrote 20 tiny chunks there)."""
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "data")
    committed = tmp_path / "data" / "chunks" / "study"
    out = tmp_path / "scratch" / "r.json"
    assert chunks.chunk_folder(None, default=committed, committed=True, out=out) == committed
    assert chunks.chunk_folder(None, default=committed, committed=False, out=out) == tmp_path / "scratch" / "r.json.chunks"
    assert chunks.chunk_folder(tmp_path / "c", default=committed, committed=False, out=out) == tmp_path / "c"
    with pytest.raises(ValueError, match="keeps the committed studies' chunks"):
        chunks.chunk_folder(committed, default=committed, committed=False, out=out)


def test_replication_smoke_cli_writes_nothing_under_data_chunks(tmp_path):
    from pcnet.experiments import replication
    assert replication.main(["--smoke", "--out", str(tmp_path / "r.json")]) == 0
    after = sorted(p.name for p in replication.CHUNK_DIR.glob("*")) if replication.CHUNK_DIR.exists() else []
    smoke = [p for p in (tmp_path / "r.json.chunks").glob("*.json")]
    assert len(smoke) == 2 * 2 * len(replication.METHODS)
    assert not {p.name for p in smoke} & set(after)  # the smoke chunks (other keys) are not in the committed folder
