"""The success body of both endpoints, in its two makings: sentence_body() in Python, and
CLAIMED_ANSWER_SQL, the same JSON built by SQLite for each sentence a claim takes (SPEC §3:
hitokoto-API field names plus the seed's `result`).

A no-repeat answer is sent as the body SQLite made when the sentence was claimed, so the
request itself builds no JSON: a claim ahead renders the sentences it reserves in the same
statement (hitokoto.pool's capture trigger), in C, where jsonify() took 10-13 µs of Python per
request (bench/FINDINGS.md, twenty-eighth session). Both makings give the same bytes
(tests/test_api_cached.py checks it on awkward texts); change them together.
"""

from __future__ import annotations


def sentence_body(sentence: dict, recycled: bool) -> dict:
    """The success body: hitokoto-API field names plus the seed's `result`."""
    return {
        "hitokoto": sentence["text"],
        "result": sentence["text"],
        "id": sentence["id"],
        "uuid": sentence["uuid"],
        "length": len(sentence["text"]),
        "source": sentence["source"],
        "recycled": recycled,
        "created_at": sentence["created_at"],
    }


# sentence_body(row, recycled=False) over a sentence_rows row, as Flask's jsonify writes it:
# keys sorted, no spaces, non-ASCII as is. length() counts characters, as len() does.
CLAIMED_ANSWER_SQL = """json_object(
    'created_at', created_at, 'hitokoto', text, 'id', id, 'length', length(text),
    'recycled', json('false'), 'result', text, 'source', source, 'uuid', uuid)"""
# Joins the answers of one claim (char(30) in SQL): JSON text escapes every control character,
# so none of them holds it.
ANSWER_SEPARATOR = "\x1e"
