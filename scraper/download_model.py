"""Stage 1: download the VGG16 convolutional weights (Keras' own no-top file), hash-checked.

Reads:  nothing (the network), or a file you brought with --from on an offline machine
Writes: <weights_path>, e.g. data/vgg16.weights.h5 (58 MB); while downloading, the bytes
        go to <weights_path>.download, which a re-run resumes with an HTTP Range request

The file is checked against its md5 (or sha256) before it is renamed into place, so the
target is either absent, the previous file, or the complete verified file. A target that
already has the right hash is left alone (no request is made).

Example:
    cxr-download-model data/vgg16.weights.h5
    cxr-download-model data/vgg16.weights.h5 \\
        --from ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
"""
import os
import re
import time

from scraper.cli import ArgumentParser, UserError, elapsed_since, exit_with, log, non_negative_int
from scraper.download import (DownloadRefused, HashMismatch, download, guess_algorithm, install,
                              verify_hash)
from scraper.http_client import make_session

# The weights' home, duplicated from learning.vgg to keep the scraper -> learning direction
# clean (learning/ may import scraper/, never the reverse); a test checks they agree.
WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
               "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
WEIGHTS_HASH = "6d6bbae143d832006294945121d1f1fc"  # md5, as keras/src/applications/vgg16.py
MAX_WEIGHTS_BYTES = 1 << 30  # the VGG16 no-top file is 58 MB; a body past 1 GB is not weights
_HEX_HASH = re.compile(r"([0-9a-fA-F]{32}|[0-9a-fA-F]{64})$")


def check_hash_text(expected_hash):
    """'' -> None (no check); 32 hex digits (md5) or 64 (sha256) -> lower-case; else UserError."""
    if not expected_hash:
        return None
    if not _HEX_HASH.match(expected_hash):
        raise UserError(f"invalid --hash {expected_hash!r}: give 32 hex digits (md5) or "
                        f"64 (sha256), or '' to skip the check")
    return expected_hash.lower()


def download_weights(weights_path, url=WEIGHTS_URL, expected_hash=WEIGHTS_HASH, from_file=None,
                     retries=5, progress=True):
    """Place verified weights at `weights_path`; returns "present", "downloaded" or "installed".

    Raises UserError (one line) for an unreachable host (mentioning --from), a hash mismatch
    (the temp file is removed) or an unreadable --from file.
    """
    weights_path = os.fspath(weights_path)
    if os.path.isdir(weights_path):
        raise UserError(f"weights path is a directory, expected a file name: {weights_path}")
    if from_file is not None:
        from_file = os.fspath(from_file)
        if not os.path.isfile(from_file):
            raise UserError(f"--from file not found: {from_file}")
        try:
            if (os.path.exists(weights_path) and os.path.samefile(from_file, weights_path)
                    and verify_hash(weights_path, expected_hash)):
                return "present"
            install(from_file, weights_path, expected_hash, source=from_file)
        except HashMismatch:
            raise
        except OSError as error:
            raise UserError(f"cannot install {from_file} as {weights_path}: "
                            f"{error.strerror or error}") from None
        return "installed"
    try:
        session = make_session(retries=retries, announce=progress)  # offline: waits are said
        return download(url, weights_path, expected_hash, session=session, progress=progress,
                        max_bytes=MAX_WEIGHTS_BYTES)
    except (HashMismatch, DownloadRefused):
        raise
    except UserError as error:
        raise UserError(f"{error}; on a machine without access, download the file elsewhere "
                        f"and install it with --from FILE") from None
    except OSError as error:
        raise UserError(f"cannot write {weights_path}: {error.strerror or error}") from None


def get_args_parser():
    parser = ArgumentParser(prog="cxr-download-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("weights_path",
                        help="where to write the weights, e.g. data/vgg16.weights.h5")
    parser.add_argument("--url", default=WEIGHTS_URL, help="where to download the weights from")
    parser.add_argument("--hash", default=WEIGHTS_HASH,
                        help="expected md5 (32 hex digits) or sha256 (64); '' skips the check")
    parser.add_argument("--from", dest="from_file", metavar="FILE", default=None,
                        help="install this local file (verified against --hash) instead of "
                             "downloading: for machines without internet access")
    parser.add_argument("--retries", type=non_negative_int, default=5,
                        help="retries per request on connection errors and 5xx/429 answers")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.from_file is None and not re.match(r"https?://", args.url):
        raise UserError(f"invalid --url {args.url!r}: expected an http:// or https:// URL")
    expected_hash = check_hash_text(args.hash)
    if expected_hash is None:
        log("cxr-download-model: warning: no --hash given, the file will not be verified")
    start = time.monotonic()
    outcome = download_weights(args.weights_path, args.url, expected_hash, args.from_file,
                               retries=args.retries, progress=not args.no_progress)
    checked = f"{guess_algorithm(expected_hash)} verified" if expected_hash else "not verified"
    size = os.path.getsize(args.weights_path)
    if outcome == "present":
        log(f"cxr-download-model: {args.weights_path} already present ({size:,} bytes, "
            f"{checked}); nothing to do")
    else:
        origin = args.from_file if outcome == "installed" else args.url
        log(f"cxr-download-model: {outcome} {args.weights_path} ({size:,} bytes, {checked}) "
            f"from {origin} in {elapsed_since(start)}")
    return 0


def cli():
    exit_with(main, "cxr-download-model")


if __name__ == "__main__":
    cli()
