//! A headless Chromium driven over the Chrome DevTools Protocol, for tests of the dashboard: it
//! opens a page, evaluates JavaScript, clicks and types like a user (real input events at the
//! element's position) and takes screenshots. [`Browser::launch`] says why when no Chromium is
//! installed, so a test can skip with that reason.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// The executables tried, in order (`CHROMIUM` overrides).
const CANDIDATES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// A running headless browser with one page.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The page's console messages and uncaught exceptions, newest last (for failure reports).
    console: Vec<String>,
}

impl Browser {
    /// Starts Chromium with a fresh profile; `Err` says that none is installed (a test then
    /// skips, saying so). A browser that is installed but fails is a panic: a test failure.
    pub fn launch() -> Result<Self, String> {
        let exe = Self::find()?;
        Ok(Self::start(&exe).unwrap_or_else(|e| panic!("{exe}: {e}")))
    }

    /// The first Chromium that answers `--version`.
    fn find() -> Result<String, String> {
        std::env::var("CHROMIUM")
            .ok()
            .into_iter()
            .chain(CANDIDATES.iter().map(|s| s.to_string()))
            .find(|c| {
                Command::new(c)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .ok_or_else(|| format!("no browser found (tried {CANDIDATES:?}; set CHROMIUM)"))
    }

    fn start(exe: &str) -> Result<Self, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {exe}: {e}"))?;
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => {
                    let _ = child.kill();
                    return Err(format!("{exe} exited before it listened"));
                }
            };
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap_or_default().to_owned();
            }
        };
        // Keep draining stderr so the browser never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let url = page_websocket(&port)?;
        let (page, _) = tungstenite::connect(url.as_str()).map_err(|e| e.to_string())?;
        let mut browser = Self {
            child,
            _profile: profile,
            page,
            next_id: 0,
            console: Vec::new(),
        };
        browser.call("Runtime.enable", json!({}));
        Ok(browser)
    }

    /// Sends a DevTools command to the page and returns its result (events are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::Text(msg.to_string().into()))
            .expect("send to the browser");
        loop {
            let msg = self.page.read().expect("read from the browser");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            self.keep_console(&v);
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Keeps what the page printed or threw, so a failed wait can show it.
    fn keep_console(&mut self, event: &Value) {
        let line = match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args = event["params"]["args"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let texts: Vec<String> = args
                    .iter()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("?").to_owned(),
                        v => v.to_string(),
                    })
                    .collect();
                format!(
                    "console.{}: {}",
                    event["params"]["type"].as_str().unwrap_or("log"),
                    texts.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &event["params"]["exceptionDetails"];
                let what = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str());
                format!("uncaught: {}", what.unwrap_or("?"))
            }
            _ => return,
        };
        self.console.push(line);
        if self.console.len() > 20 {
            self.console.remove(0);
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// The value of a JavaScript expression on the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` every 100 ms until `ok` holds for its value (panics after `secs`).
    pub fn wait_for(
        &mut self,
        what: &str,
        secs: u64,
        expression: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expression);
            if ok(&v) {
                return v;
            }
            if Instant::now() >= deadline {
                let text = self.eval("document.body ? document.body.innerText.slice(0, 600) : ''");
                panic!(
                    "timed out waiting for {what} (last: {v})\npage console:\n{}\npage text:\n{}",
                    self.console.join("\n"),
                    text.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A left click in the middle of the element with id `id`, as a mouse would. The element is
    /// scrolled into view first and the click waits until the page has settled there (the point
    /// really hits the element): newer Chromium finishes a scroll after the call that asked
    /// for it, and a click at the pre-scroll position lands beside the element.
    pub fn click(&mut self, id: &str) {
        let locate = format!(
            "(async () => {{ const e = document.getElementById({id:?}); \
             if (!e) return null; \
             e.scrollIntoView({{ block: 'center', inline: 'center', behavior: 'instant' }}); \
             await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); \
             const r = e.getBoundingClientRect(); const x = r.x + r.width / 2, y = r.y + r.height / 2; \
             const hit = document.elementFromPoint(x, y); \
             return [x, y, !!hit && (hit === e || e.contains(hit))]; }})()"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let (x, y) = loop {
            let at = self.eval(&locate);
            assert!(!at.is_null(), "no element with id {id:?} on the page");
            if at[2] == json!(true) {
                break (at[0].as_f64().expect("x"), at[1].as_f64().expect("y"));
            }
            assert!(
                Instant::now() < deadline,
                "element {id:?} is covered or off screen at {at}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Clicks the input `id`, waits until it has the focus and types `text` into it.
    pub fn type_into(&mut self, id: &str, text: &str) {
        self.click(id);
        let focused = format!("document.activeElement && document.activeElement.id === {id:?}");
        self.wait_for(&format!("the focus on {id:?}"), 10, &focused, |v| {
            v == &json!(true)
        });
        self.call("Input.insertText", json!({ "text": text }));
        let value = format!("document.getElementById({id:?}).value");
        self.wait_for(&format!("{text:?} in {id:?}"), 10, &value, |v| {
            v.as_str().is_some_and(|s| s.ends_with(text))
        });
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("image data"))
            .expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DevTools WebSocket URL of the browser's first page (`/json/list` on `port`).
fn page_websocket(port: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            // The Host header names the port: DevTools builds the page URLs from it.
            let get = format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            s.write_all(get.as_bytes())?;
            // The DevTools server keeps the connection open: read up to Content-Length.
            let mut raw = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk)?;
                raw.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    if n == 0 {
                        return Ok(text);
                    }
                    continue;
                };
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if n == 0 || length.is_some_and(|len| body.len() >= len) {
                    return Ok(text);
                }
            }
        })();
        if let Ok(raw) = listed
            && let Some((_, body)) = raw.split_once("\r\n\r\n")
            && let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(body)
            && let Some(url) = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        {
            return Ok(url.to_owned());
        }
        if Instant::now() > deadline {
            return Err("the browser listed no page".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
