"""images-description.json read one record at a time, for stage 4 at 100,000+ images.

scraper.schema.load_descriptions builds the whole list (about 1 KB of Python objects per
record: 44 MB for 50,000, plus the text); stage 4 needs only each image's label and group.
`iter_records` parses the JSON list incrementally (json.JSONDecoder.raw_decode over a
bounded buffer) and validates each record exactly as load_descriptions does
(scraper.schema.validate_record), with the same one-line errors.
"""
import codecs
import json

from scraper.cli import UserError
from scraper.fileio import open_regular
from scraper.schema import validate_record

CHUNK = 1 << 16   # small: the buffer is sliced and joined as records are consumed
WHAT = "image descriptions"


def _chunks(path):
    try:
        handle = open_regular(path, WHAT)
    except FileNotFoundError:
        raise UserError(f"{WHAT} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{WHAT} is a directory, expected a file: {path}") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    with handle:
        while True:
            data = handle.read(CHUNK)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                raise UserError(f"{WHAT} is not valid JSON: {path} ({error})") from None
            if text:
                yield text
            if not data:
                return


def iter_records(path):
    """Yield each validated record of the JSON list in `path`; UserError on any problem."""
    path = str(path)
    decoder = json.JSONDecoder()
    chunks = _chunks(path)
    buffer, position, index, done = "", 0, 0, False

    def more():
        nonlocal buffer, position, done
        if done:
            return False
        chunk = next(chunks, None)
        if chunk is None:
            done = True
            return False
        buffer = buffer[position:] + chunk
        position = 0
        return True

    def skip_space():
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                position += 1
            if position < len(buffer) or not more():
                return position < len(buffer)

    if not skip_space() or buffer[position] != "[":
        raise UserError(f"{WHAT} must be a JSON list of records: {path}")
    position += 1
    expect_item = None          # None: first item or "]"; True: after ","
    while True:
        if not skip_space():
            raise UserError(f"{WHAT} is not valid JSON: {path} (ends inside the list)")
        if buffer[position] == "]" and expect_item is not True:
            position += 1
            if skip_space():
                raise UserError(f"{WHAT} is not valid JSON: {path} (extra data after the list)")
            return
        while True:
            try:
                record, end = decoder.raw_decode(buffer, position)
                if end == len(buffer) and not done and more():
                    continue        # a number may go on in the next chunk
                break
            except json.JSONDecodeError as error:
                pending = len(buffer) - position
                if not more():
                    raise UserError(f"{WHAT} is not valid JSON: {path} ({error.msg} in record "
                                    f"#{index})") from None
                while len(buffer) < 2 * pending and more():
                    pass    # a record longer than CHUNK: double what is read, so it is
                    #         decoded O(log size) times, not once per CHUNK
        position = end
        try:
            validate_record(record)
        except ValueError as error:
            raise UserError(f"{path}: record #{index}: {error}") from None
        yield record            # duplicates: the consumer sees them (stage 4's match_examples)
        index += 1
        if not skip_space():
            raise UserError(f"{WHAT} is not valid JSON: {path} (ends inside the list)")
        if buffer[position] == ",":
            position += 1
            expect_item = True
        elif buffer[position] != "]":
            raise UserError(f"{WHAT} is not valid JSON: {path} (expected ',' or ']' after "
                            f"record #{index - 1})")
        else:
            expect_item = False
