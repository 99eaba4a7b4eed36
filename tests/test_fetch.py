"""`mtcli data fetch multi30k`: downloads from a local HTTP server and file URLs, the cache, offline --from,
checksum and missing-file errors. Never the network."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from mtcli.data.fetch import MULTI30K_SPLITS, fetch_multi30k
from mtcli.errors import DataError
from tests.test_cli import invoke, one_line_error

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def tiny_corpus(folder: Path, langs=("de", "en")) -> dict[str, str]:
    """Multi30k-shaped tiny files under the repository's names, gzipped; returns their checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for split, remote in MULTI30K_SPLITS.items():
        for lang in langs:
            text = "".join(f"{split} sentence {i} in {lang} .\n" for i in range(3)).encode()
            (folder / f"{remote}.{lang}.gz").write_bytes(gzip.compress(text))
            checksums[f"{split}.{lang}"] = hashlib.sha256(text).hexdigest()
    return checksums


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www that counts the requests it answers."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/data/", requests
    httpd.shutdown()


def test_download_checks_caches_and_skips_what_is_there(tmp_path, server):
    root, url, requests = server
    checksums = tiny_corpus(root / "data")
    dest, cache = tmp_path / "multi30k", tmp_path / "cache"
    files = fetch_multi30k(dest, ("de", "en"), base_url=url, cache=cache, checksums=checksums)
    assert sorted(p.name for p in files) == ["test2016.de", "test2016.en", "train.de", "train.en", "val.de", "val.en"]
    assert (dest / "val.en").read_text() == "".join(f"val sentence {i} in en .\n" for i in range(3))
    assert len(requests) == 6 and sorted(p.name for p in cache.iterdir())[0] == "test_2016_flickr.de.gz"
    (dest / "train.de").unlink()
    (dest / "val.en").write_text("damaged\n")
    fetch_multi30k(dest, ("de", "en"), base_url=url, cache=cache, checksums=checksums)
    assert len(requests) == 6  # the two files came back from the cache, the rest were already right
    assert (dest / "val.en").read_text().startswith("val sentence 0 in en")


def test_file_urls_and_bad_checksums(tmp_path):
    www = tmp_path / "www"
    checksums = tiny_corpus(www)
    wrong = dict(checksums, **{"val.en": "0" * 64})  # as if the server's val.en were another version
    with pytest.raises(DataError, match=r"val.en.gz: checksum mismatch for val.en .*expected 0000000000000000"):
        fetch_multi30k(tmp_path / "dest", ("en",), base_url=www.as_uri(), cache=tmp_path / "cache",
                       checksums=wrong)
    assert not (tmp_path / "dest" / "val.en").exists()  # nothing written under the real name ...
    assert not (tmp_path / "cache" / "val.en.gz").exists()  # ... and the bad download not kept
    assert fetch_multi30k(tmp_path / "dest", ("en",), base_url=www.as_uri(), cache=tmp_path / "cache",
                          checksums=checksums)


def test_missing_file_on_the_server_and_offline_folder(tmp_path, server):
    root, url, _ = server
    checksums = tiny_corpus(root / "data", langs=("de",))
    with pytest.raises(DataError, match=r"train.en.gz: download failed \(HTTP 404"):
        fetch_multi30k(tmp_path / "dest", ("de", "en"), base_url=url, cache=tmp_path / "cache", checksums=checksums)
    with pytest.raises(DataError, match="no train.en .nor train.en, plain or .gz. in this folder"):
        fetch_multi30k(tmp_path / "dest", ("en",), source=root / "data", checksums=checksums)
    with pytest.raises(DataError, match="--langs: xx: Multi30k has de, en, fr, cs"):
        fetch_multi30k(tmp_path / "dest", ("xx",))


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the Multi30k copy in ../shared/data/multi30k")
def test_cli_fetches_the_real_files_offline_and_from_file_urls(tmp_path):
    # the real files, gzipped under the repository's names, served as file:// URLs: the pinned checksums hold
    www = tmp_path / "www"
    www.mkdir()
    for split, remote in MULTI30K_SPLITS.items():
        (www / f"{remote}.de.gz").write_bytes(gzip.compress((SHARED / f"{split}.de").read_bytes(), compresslevel=1))
    result = invoke("data", "fetch", "multi30k", tmp_path / "a", "--langs", "de", "--url", www.as_uri(),
                    "--cache", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "29,000 lines" in result.output and "3 files in" in result.output
    assert (tmp_path / "a" / "train.de").read_bytes() == (SHARED / "train.de").read_bytes()
    result = invoke("data", "fetch", "multi30k", tmp_path / "b", "--langs", "de,en", "--from", SHARED)
    assert result.exit_code == 0 and "6 files in" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.de").write_text("not Multi30k\n")
    one_line_error(invoke("data", "fetch", "multi30k", tmp_path / "c", "--langs", "de", "--from", tmp_path / "bad"),
                   "checksum mismatch for train.de")
    one_line_error(invoke("data", "fetch", "multi30k", tmp_path / "c", "--url", (tmp_path / "nothing").as_uri(),
                          "--cache", tmp_path / "cache2"), "download failed")
    one_line_error(invoke("data", "fetch", "wmt14", tmp_path / "c"), "wmt14: unknown corpus (known: multi30k)")
