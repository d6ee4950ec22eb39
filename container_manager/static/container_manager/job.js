/* Django Container Jobs admin: durations that tick, and a job page that follows its job.
 *
 * Everything the server sends is the users' text: it is only ever put in the page with
 * textContent, never as HTML.
 */
(function () {
    "use strict";
    const POLL_MS = 1000;
    // Server time minus browser time, so a running job's duration is right on a skewed clock.
    let skew = 0;

    function humanSeconds(seconds) {
        if (seconds < 60) return seconds.toFixed(1) + " s";
        let whole = Math.round(seconds);
        let minutes = Math.floor(whole / 60), secs = whole % 60;
        const pad = (n) => String(n).padStart(2, "0");
        if (minutes < 60) return minutes + " min " + pad(secs) + " s";
        let hours = Math.floor(minutes / 60); minutes %= 60;
        if (hours < 24) return hours + " h " + pad(minutes) + " min";
        return Math.floor(hours / 24) + " d " + pad(hours % 24) + " h";
    }

    function tick() {
        const now = Date.now() + skew;
        document.querySelectorAll(".cm-duration[data-started]").forEach(function (span) {
            if (span.dataset.finished || !span.dataset.started) return;
            span.textContent = humanSeconds(Math.max(0, now - Date.parse(span.dataset.started)) / 1000);
        });
    }

    function setSkew(serverIso) {
        if (serverIso) skew = Date.parse(serverIso) - Date.now();
    }

    function confirmForms() {
        document.querySelectorAll("form[data-confirm]").forEach(function (form) {
            form.addEventListener("submit", function (event) {
                if (!window.confirm(form.dataset.confirm)) event.preventDefault();
            });
        });
    }

    // A chatty job could print more than a page should hold: keep the latest part.
    const PANEL_CHARACTERS = 2000000;

    function keepTail(log) {
        const text = log.textContent;
        if (text.length > PANEL_CHARACTERS) {
            log.textContent = "[... earlier output left out of this panel; the stored output "
                + "keeps the head and the tail when the job ends ...]\n"
                + text.slice(text.length - PANEL_CHARACTERS / 2);
        }
    }

    function followJob(root) {
        const url = root.dataset.liveUrl;
        const log = document.getElementById("cm-log");
        let offset = 0;
        let execution = root.dataset.execution || "";
        let finished = root.dataset.terminal === "1";

        function setText(id, text) {
            const element = document.getElementById(id);
            if (element) element.textContent = text;
        }

        function show(data) {
            setSkew(data.now);
            const badge = document.querySelector("#cm-status .cm-badge");
            if (badge) {
                badge.className = "cm-badge cm-status-" + data.status;
                badge.dataset.status = data.status;
                badge.textContent = data.status_display + (data.cancelling ? " · cancelling" : "");
            }
            const duration = document.querySelector("#cm-duration .cm-duration");
            if (duration) {
                duration.dataset.started = data.started_at || "";
                duration.dataset.finished = data.finished_at || "";
                if (data.finished_at && data.started_at) {
                    duration.textContent = humanSeconds(
                        (Date.parse(data.finished_at) - Date.parse(data.started_at)) / 1000);
                }
            }
            setText("cm-exit-code", data.exit_code === null ? "—" : String(data.exit_code));
            setText("cm-attempts", data.attempts);
            setText("cm-started", data.started);
            setText("cm-finished", data.finished);
            setText("cm-host", data.host || "—");
            setText("cm-execution", data.execution_id || "—");
            const error = document.getElementById("cm-error");
            if (error) {
                error.hidden = !data.last_error;
                error.querySelector("pre").textContent = data.last_error;
            }
            const waiting = document.getElementById("cm-waiting");
            if (waiting) {
                const list = waiting.querySelector("ul");
                list.replaceChildren(...data.waiting.map(function (reason) {
                    const item = document.createElement("li");
                    item.textContent = reason;
                    return item;
                }));
                waiting.hidden = data.waiting.length === 0;
            }
            if (data.live) {
                document.getElementById("cm-live-panel").hidden = false;
                document.getElementById("cm-no-output").hidden = true;
                if (data.live.execution_id !== execution || data.live.restarted) {
                    log.textContent = "";
                }
                execution = data.live.execution_id;
                const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
                if (data.live.text) log.append(document.createTextNode(data.live.text));
                keepTail(log);
                if (atBottom) log.scrollTop = log.scrollHeight;
                offset = data.live.offset;
                setText("cm-live-note", data.live.error
                    ? "cannot read the output now: " + data.live.error
                    : "following the running container…");
            }
            if (data.terminal) {
                document.getElementById("cm-no-output").hidden = true;
                setText("cm-stdout", data.stdout);
                setText("cm-stderr", data.stderr);
                document.getElementById("cm-stored").hidden = false;
                document.getElementById("cm-live-panel").hidden = true;
                setText("cm-live-note", "");
                finished = true;
            }
        }

        async function poll() {
            try {
                const query = "?offset=" + offset + "&execution=" + encodeURIComponent(execution);
                const response = await fetch(url + query, {
                    credentials: "same-origin", headers: {"Accept": "application/json"},
                });
                if (response.ok) show(await response.json());
            } catch (error) {
                // The server is restarting or the network blinked: try again next turn.
            }
            if (!finished) window.setTimeout(poll, POLL_MS);
        }

        if (!finished) poll();
    }

    document.addEventListener("DOMContentLoaded", function () {
        const root = document.getElementById("cm-job");
        if (root) setSkew(root.dataset.now);
        tick();
        window.setInterval(tick, 1000);
        confirmForms();
        if (root) followJob(root);
    });
})();
