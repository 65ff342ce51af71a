"""The baseline for bench/http_throughput.py: a bare Flask JSON endpoint, no auth, no
limiter, no database; served by the same gunicorn.conf.py as the real app."""

from flask import Flask, jsonify, request

app = Flask(__name__)
app.json.ensure_ascii = False


@app.post("/bare")
def bare():
    body = request.get_json()
    return jsonify({"hitokoto": "风停了，旗子才想起自己是旗子。", "recycled": False, "echo": bool(body)})
