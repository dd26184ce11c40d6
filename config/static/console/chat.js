/* The chat page's client: one WebSocket to /ws/chat/, speaking the protocol of wire/events.py
   (described in the README). No build step.

   The page follows one session. On connect it sends `open` and renders the `session` snapshot;
   after a dropped connection it reconnects and sends `resume` with the last `seq` it saw, so it
   gets what it missed and then follows live. Model output is Markdown rendered by markdown-it
   with raw HTML disabled, then sanitised by DOMPurify before it touches the DOM; the user's own
   text is only ever set as text. */
(function () {
  "use strict";

  const root = document.querySelector("[data-chat]");
  if (!root) return;

  const sessionId = root.dataset.sessionId;
  const log = root.querySelector("[data-log]");
  const scroller = root.querySelector("[data-scroll]");
  const empty = root.querySelector("[data-empty]");
  const form = root.querySelector("[data-composer]");
  const input = form.querySelector("textarea");
  const sendButton = root.querySelector("[data-send]");
  const stopButton = root.querySelector("[data-stop]");
  const connection = root.querySelector("[data-connection]");
  const budgets = root.querySelector("[data-budgets]");
  const titleEl = root.querySelector("[data-chat-title]");
  const agentStatus = root.querySelector("[data-agent-status]");

  const md = window.markdownit({ html: false, linkify: true, breaks: false });
  const REFUSALS = {
    quota_exceeded: "Quota reached",
    budget_exceeded: "Budget spent",
    rate_limited: "Rate limit",
    rate_limit_error: "Claude is busy",
    agent_not_running: "The agent is not running",
    agent_unavailable: "The agent cannot be reached",
    agent_not_found: "No such agent",
    agent_at_capacity: "The agent is full",
    turn_cancelled: "Stopped",
    conflict: "Not now",
    not_found: "Not found",
    request_too_large: "Too long",
    user_suspended: "Account suspended",
    internal_error: "Something failed",
  };

  let socket = null;
  let opened = false; // a snapshot was rendered: reconnects resume from lastSeq
  let lastSeq = 0;
  let retry = 0;
  let running = null; // the turn being written: {id, kept, user, reply, text, hidden}
  let messages = []; // recorded messages, in order, as the server sent them
  let closed = false;

  /* ---------- Rendering ---------- */

  function markdown(text) {
    return window.DOMPurify.sanitize(md.render(text), { USE_PROFILES: { html: true } });
  }

  function money(value) {
    const n = Number(value);
    if (!n) return "$0";
    return "$" + (n < 0.01 ? n.toPrecision(2) : n.toFixed(4).replace(/0+$/, "").replace(/\.$/, ""));
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function bubble(role) {
    const item = el("li", "msg msg-" + role);
    const who = el("div", "msg-who", role === "user" ? "You" : "Agent");
    const body = el("div", "msg-body");
    const meta = el("div", "msg-meta");
    item.append(who, body, meta);
    return item;
  }

  function setBody(item, role, text) {
    const body = item.querySelector(".msg-body");
    if (role === "assistant") body.innerHTML = markdown(text);
    else body.textContent = text;
  }

  function messageItem(message) {
    const item = bubble(message.role);
    item.dataset.id = message.id;
    setBody(item, message.role, message.content);
    const meta = item.querySelector(".msg-meta");
    if (message.role === "assistant") {
      const total = message.input_tokens + message.output_tokens;
      meta.append(
        el("span", "msg-usage", `${total.toLocaleString()} tokens (${message.input_tokens.toLocaleString()} in, ${message.output_tokens.toLocaleString()} out) · ${money(message.cost_usd)}`)
      );
    } else if (!closed) {
      const edit = el("button", "btn btn-ghost btn-sm", "Edit");
      edit.type = "button";
      edit.dataset.edit = message.id;
      meta.append(edit);
    }
    return item;
  }

  function renderMessages() {
    log.replaceChildren(...messages.map(messageItem));
    const last = log.querySelector(".msg-assistant:last-child .msg-meta");
    if (last && !closed && !running) {
      const again = el("button", "btn btn-ghost btn-sm", "Regenerate");
      again.type = "button";
      again.dataset.regenerate = "";
      last.append(again);
    }
    empty.hidden = messages.length > 0 || !!running;
    if (running) log.append(...[running.user, running.reply].filter(Boolean));
    scrollDown(true);
  }

  function renderBudgets(list) {
    if (!list) return;
    const rows = list.length
      ? list.map((b) => {
          const usd = b.metric === "usd";
          const div = el("div");
          div.append(
            el("dt", "", `${usd ? "USD" : "Tokens"}, ${b.window.toLowerCase()}`),
            el("dd", "", `${usd ? "$" : ""}${b.remaining} left of ${usd ? "$" : ""}${b.limit}`)
          );
          if (Number(b.remaining) <= 0) div.classList.add("is-spent");
          return div;
        })
      : [(() => { const d = el("div"); d.append(el("dt", "", "Budget"), el("dd", "", "No limit set")); return d; })()];
    budgets.replaceChildren(...rows);
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function scrollDown(force) {
    if (force || nearBottom()) scroller.scrollTop = scroller.scrollHeight;
  }

  function setRunning(turn) {
    running = turn;
    stopButton.hidden = !turn;
    sendButton.disabled = !!turn || closed;
    root.classList.toggle("is-running", !!turn);
  }

  function setAgentStatus(status) {
    if (!agentStatus || !status) return;
    agentStatus.textContent = status;
    agentStatus.className = "badge status-" + status;
  }

  // The snapshot's status is the agent's when the page opened; an answer from it means it has
  // booted since (events carry no status of their own).
  function agentAnswered() {
    if (agentStatus && ["pending", "starting"].includes(agentStatus.textContent.trim())) {
      setAgentStatus("running");
    }
  }

  function setConnection(text, state) {
    connection.textContent = text;
    connection.dataset.state = state;
  }

  function notice(error) {
    const item = el("li", "msg msg-notice");
    item.setAttribute("role", "alert");
    item.append(el("strong", "", (REFUSALS[error.code] || "Refused") + ": "), el("span", "", error.message));
    log.append(item);
    scrollDown(true);
    setTimeout(() => item.remove(), 8000);
  }

  /* ---------- The session's stream ---------- */

  let paint = 0;
  function paintReply() {
    if (paint) return;
    paint = requestAnimationFrame(() => {
      paint = 0;
      if (!running) return;
      const stick = nearBottom();
      setBody(running.reply, "assistant", running.text);
      if (stick) scrollDown(true);
    });
  }

  function endTurn(state, ...note) {
    if (!running) return;
    const turn = running;
    turn.reply.classList.remove("is-streaming");
    turn.reply.classList.add("is-" + state);
    turn.user.classList.add("is-" + state);
    setBody(turn.reply, "assistant", turn.text);
    turn.reply.querySelector(".msg-meta").replaceChildren(...note);
    setRunning(null);
    renderMessages(); // what the turn would have replaced comes back: nothing of it was kept
    log.append(turn.user, turn.reply);
    scrollDown(true);
  }

  const handlers = {
    ready() {
      if (opened) send({ type: "resume", session_id: sessionId, after: lastSeq });
      else send({ type: "open", session_id: sessionId });
    },

    session(event) {
      opened = true;
      lastSeq = event.seq;
      closed = event.closed;
      messages = event.messages;
      if (titleEl) titleEl.textContent = event.title || "New chat";
      setAgentStatus(event.agent_status);
      renderBudgets(event.budgets);
      setRunning(null); // the running turn's events follow, replayed
      renderMessages();
    },

    turn_started(event) {
      const user = bubble("user");
      setBody(user, "user", event.prompt);
      user.classList.add("is-pending");
      const reply = bubble("assistant");
      reply.classList.add("is-streaming");
      reply.querySelector(".msg-body").append(el("span", "typing", "Thinking…"));
      reply.querySelector(".msg-meta").append(el("span", "msg-state", "Writing…"));
      // A regenerated or edited turn replaces what follows the kept messages if it completes.
      const hidden = Array.from(log.querySelectorAll(".msg[data-id]")).slice(event.kept_messages);
      for (const item of hidden) item.hidden = true;
      setRunning({ id: event.turn_id, kept: event.kept_messages, user, reply, text: "", hidden });
      log.querySelectorAll("[data-regenerate]").forEach((b) => b.remove());
      log.append(user, reply);
      empty.hidden = true;
      if (titleEl && titleEl.textContent === "New chat") {
        const title = event.prompt.trim().slice(0, 80);
        titleEl.textContent = title;
        const listed = document.querySelector(`.chat-sessions a[data-session-id="${sessionId}"] .chat-session-title`);
        if (listed) listed.textContent = title;
      }
      scrollDown(true);
    },

    delta(event) {
      if (!running || running.id !== event.turn_id) return;
      running.text += event.text;
      agentAnswered();
      paintReply();
    },

    tool(event) {
      if (!running || running.id !== event.turn_id) return;
      const name = (event.tool && (event.tool.name || event.tool.tool)) || "a tool";
      running.reply.querySelector(".msg-meta").prepend(el("span", "msg-tool", "Used " + name));
    },

    done(event) {
      agentAnswered();
      const turn = running && running.id === event.turn_id ? running : null;
      if (turn) { turn.user.remove(); turn.reply.remove(); }
      setRunning(null);
      const ids = new Set(event.messages.map((m) => m.id));
      messages = messages.slice(0, event.kept_messages).filter((m) => !ids.has(m.id)).concat(event.messages);
      renderBudgets(event.budgets);
      renderMessages();
      // The turn's tools may have written files: the files panel lists its folder again.
      document.body.dispatchEvent(new CustomEvent("files-refresh"));
    },

    cancelled(event) {
      if (!running || running.id !== event.turn_id) return;
      endTurn("stopped", el("span", "msg-state", "Stopped. This turn is not kept in the conversation; what was used is charged."));
    },

    error(event) {
      const title = (REFUSALS[event.error.code] || "Failed") + ": ";
      if (event.turn_id && running && running.id === event.turn_id) {
        endTurn("failed", el("strong", "", title), el("span", "", event.error.message));
      } else {
        notice(event.error);
      }
    },
  };

  // A reply that goes quiet is asked after: the server replays what this page missed, or ends
  // the turn if the web process writing it stopped.
  const QUIET_MS = 15000;
  let heardAt = Date.now();
  setInterval(() => {
    if (!running || Date.now() - heardAt < QUIET_MS) return;
    heardAt = Date.now();
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "resume", session_id: sessionId, after: lastSeq }));
    }
  }, 5000);

  function receive(message) {
    heardAt = Date.now();
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (typeof event.seq === "number" && event.type !== "session") {
      if (event.seq <= lastSeq) return; // seen already (a replay overlapping the live stream)
      lastSeq = event.seq;
    }
    const handler = handlers[event.type];
    if (handler) handler(event);
  }

  /* ---------- The socket ---------- */

  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      notice({ code: "agent_unavailable", message: "Not connected yet: trying again in a moment." });
      return false;
    }
    socket.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.socket}`);
    socket.addEventListener("open", () => { retry = 0; setConnection("Live", "live"); });
    socket.addEventListener("message", receive);
    socket.addEventListener("close", (event) => {
      socket = null;
      if (event.code === 4401 || event.code === 4403) {
        setConnection("Signed out: reload the page to sign in again", "closed");
        return;
      }
      const wait = Math.min(10000, 500 * 2 ** retry++);
      setConnection(`Reconnecting in ${Math.round(wait / 1000) || 1} s…`, "retrying");
      setTimeout(connect, wait);
    });
  }

  /* ---------- What the user does ---------- */

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value;
    if (!content.trim() || running) return;
    if (send({ type: "send", session_id: sessionId, content })) input.value = "";
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => send({ type: "stop", session_id: sessionId }));

  log.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button || running) return;
    if (button.dataset.regenerate !== undefined) {
      send({ type: "regenerate", session_id: sessionId });
    } else if (button.dataset.edit) {
      startEdit(button.closest(".msg"), Number(button.dataset.edit));
    }
  });

  function startEdit(item, messageId) {
    const original = messages.find((m) => m.id === messageId);
    if (!original || item.querySelector("form")) return;
    const editor = el("form", "msg-edit");
    const area = el("textarea");
    area.value = original.content;
    area.rows = Math.min(10, original.content.split("\n").length + 1);
    area.setAttribute("aria-label", "Edit your message");
    const save = el("button", "btn btn-primary btn-sm", "Save & send");
    save.type = "submit";
    const cancel = el("button", "btn btn-ghost btn-sm", "Cancel");
    cancel.type = "button";
    const row = el("div", "btn-group");
    row.append(save, cancel);
    editor.append(area, row);
    const body = item.querySelector(".msg-body");
    body.hidden = true;
    item.insertBefore(editor, body.nextSibling);
    area.focus();
    cancel.addEventListener("click", () => { editor.remove(); body.hidden = false; });
    editor.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!area.value.trim()) return;
      send({ type: "edit", session_id: sessionId, message_id: messageId, content: area.value });
      editor.remove();
      body.hidden = false;
    });
  }

  setRunning(null);
  connect();
})();
