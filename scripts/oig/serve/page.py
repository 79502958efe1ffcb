"""The chat page at ``GET /``: a reporter tries the live model before filing a bug.

Three static files, no external assets: the HTML, its script (``/chat.js``) and its style
(``/chat.css``). The page's Content-Security-Policy allows only those and calls to this server, so
nothing inline runs. Model output is untrusted text: the script puts it in the page with
``textContent``, never as HTML. Answers stream (``stream: true``, read as server-sent events). The
page itself is public (it holds no data); its API calls send the key typed into it, as any client's
must. ``--no-ui`` turns it off (404).
"""

from __future__ import annotations

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
ROUTES = ("/", "/chat.js", "/chat.css")  # the page's files; the gate lets them through without the key
HEADER_CSP = CSP + "; frame-ancestors 'none'"  # frame-ancestors counts only in a header, not in <meta>

HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>oig chat</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/chat.css">
<script src="/chat.js" defer></script>
</head>
<body>
<header><h1>oig chat</h1><span id="model">connecting…</span></header>
<main id="log" aria-live="polite"></main>
<form id="ask">
  <textarea id="question" rows="3" placeholder="Ask the model something…" required></textarea>
  <div class="row">
    <input id="key" type="password" placeholder="API key (if the server needs one)" autocomplete="off">
    <button id="send" type="submit">Send</button>
    <button id="clear" type="button">New chat</button>
  </div>
</form>
<footer>Answers come from the model as it is; if one is wrong, report it as a bug with the question,
the answer and what you expected.</footer>
</body>
</html>
"""

CSS = """body { font: 16px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 48rem; padding: 1rem;
  color: #1b1b1b; background: #fafafa; }
header { display: flex; align-items: baseline; gap: 1rem; }
h1 { font-size: 1.3rem; margin: 0; }
#model { color: #555; font-family: monospace; }
#log { min-height: 12rem; margin: 1rem 0; }
.turn { white-space: pre-wrap; border-radius: .5rem; padding: .6rem .8rem; margin: .5rem 0; }
.user { background: #e3ecfa; }
.assistant { background: #fff; border: 1px solid #ddd; }
.error { background: #fdecea; color: #8a1c12; }
textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .5rem; }
.row { display: flex; gap: .5rem; margin-top: .5rem; }
#key { flex: 1; font: inherit; padding: .3rem; }
button { font: inherit; padding: .3rem 1rem; }
footer { color: #666; font-size: .85rem; margin-top: 1rem; }
"""

JS = r"""'use strict';
(() => {
  const log = document.getElementById('log');
  const form = document.getElementById('ask');
  const question = document.getElementById('question');
  const key = document.getElementById('key');
  const send = document.getElementById('send');
  const modelLabel = document.getElementById('model');
  let model = null;
  let history = [];

  function headers() {
    const h = {'Content-Type': 'application/json'};
    if (key.value) h['Authorization'] = 'Bearer ' + key.value;
    return h;
  }
  function turn(kind, text) {
    const div = document.createElement('div');
    div.className = 'turn ' + kind;
    div.textContent = text;  // untrusted text: never HTML
    log.appendChild(div);
    return div;
  }
  async function errorOf(response) {
    try { return (await response.json()).error.message; } catch (e) { return 'HTTP ' + response.status; }
  }
  async function connect() {
    try {
      const r = await fetch('/v1/models', {headers: headers()});
      if (!r.ok) { modelLabel.textContent = await errorOf(r); return false; }
      model = (await r.json()).data[0].id;
      modelLabel.textContent = model;
      return true;
    } catch (e) { modelLabel.textContent = 'cannot reach the server'; return false; }
  }
  async function ask(text) {
    if (!model && !(await connect())) { turn('error', modelLabel.textContent); return; }
    history.push({role: 'user', content: text});
    turn('user', text);
    const answer = turn('assistant', '');
    let r;
    try {
      r = await fetch('/v1/chat/completions', {method: 'POST', headers: headers(),
        body: JSON.stringify({model: model, messages: history, stream: true})});
    } catch (e) { answer.className = 'turn error'; answer.textContent = 'cannot reach the server'; return; }
    if (!r.ok) { answer.className = 'turn error'; answer.textContent = await errorOf(r); history.pop(); return; }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '', said = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 2);
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const event = JSON.parse(line.slice(6));
        if (event.error) { answer.className = 'turn error'; answer.textContent = event.error.message; continue; }
        const delta = (event.choices[0] || {}).delta || {};
        if (delta.content) { said += delta.content; answer.textContent = said; }
      }
    }
    history.push({role: 'assistant', content: said});
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text) return;
    question.value = '';
    send.disabled = true;
    try { await ask(text); } finally { send.disabled = false; question.focus(); }
  });
  document.getElementById('clear').addEventListener('click', () => { history = []; log.textContent = ''; });
  key.addEventListener('change', () => { model = null; connect(); });
  connect();
})();
"""


def add_routes(app) -> None:
    """GET / (the page), /chat.js and /chat.css, each with the page's CSP and no caching surprises."""
    from fastapi.responses import Response

    def static(body: str, media_type: str):
        async def route():
            return Response(body, media_type=media_type,
                            headers={"Content-Security-Policy": HEADER_CSP, "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-cache"})
        return route

    files = (HTML, "text/html; charset=utf-8"), (JS, "text/javascript; charset=utf-8"), (CSS, "text/css; charset=utf-8")
    for route, (body, media_type) in zip(ROUTES, files, strict=True):
        app.get(route, include_in_schema=False)(static(body, media_type))
