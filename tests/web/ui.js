// Drives the web UI in headless chromium (puppeteer-core) against a running daemon, as a
// user would: connect with the token, run a container from the form, see it in the
// list, open its page (logs, stats, a shell), stop and remove it with the buttons, and
// see the image on the images page. Prints TAP lines; exits 1 on the first failure.
//   node ui.js PORT TOKEN IMAGE HOST_PORT SHOTS_DIR
"use strict";
const puppeteer = require("puppeteer-core");
const [port, token, image, hostPort, shots] = process.argv.slice(2);
let n = 0;
function ok(cond, what) {
  n++;
  console.log(`${cond ? "ok" : "not ok"} ${n} - ${what}`);
  if (!cond) throw new Error("failed: " + what);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Say each step before doing it, so that a run that stops somewhere says where.
const step = (what) => console.log(`# ${new Date().toISOString().slice(11, 23)} ${what}`);
// Nothing below may wait for ever: puppeteer's waits have timeouts, fetch gets one here,
// and the whole run gets a watchdog (ui.sh also runs node under timeout(1)).
setTimeout(() => { console.log("# watchdog: the run took over 7 minutes"); process.exit(1); }, 420000).unref();

(async () => {
  step("launching chromium");
  const browser = await puppeteer.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true, protocolTimeout: 240000, timeout: 60000, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  const errors = [];
  let page;
  try {
    page = await browser.newPage();
    page.setDefaultTimeout(30000);
    await page.setViewport({ width: 1200, height: 900 });
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => d.accept());
    const base = `http://127.0.0.1:${port}/`;
    const text = () => page.evaluate(() => document.body.innerText);

    // connect with the token through the login form
    step("the login page");
    await page.goto(base);
    await page.waitForSelector("#token", { visible: true });
    await page.type("#token", token);
    await page.click("#login-form button");
    await page.waitForSelector("form.inline input[name=image]", { timeout: 15000 });
    ok(true, "the token form leads to the containers page");

    // run a container from the form
    step("running a container from the form");
    await page.type("input[name=image]", image);
    await page.type("input[name=name]", "webui");
    await page.type("input[name=ports]", `${hostPort}:80`);
    await page.click("form.inline button[type=submit]");
    await page.waitForFunction(() => [...document.querySelectorAll("tbody tr")]
      .some((r) => r.innerText.includes("webui") && r.innerText.includes("Up")), { timeout: 180000 });
    ok(true, "the container runs and the list shows it as Up");
    ok((await text()).includes(`${hostPort}->80/tcp`), "the list shows its published port");

    // a request through the published port, then the container's page
    step("a request through the published port");
    let body = "";
    for (const until = Date.now() + 60000; Date.now() < until && !body.includes("hello from moonbox");) {
      try {
        body = await (await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(5000) })).text();
      } catch (e) { step(`the published port: ${e.message}`); }
      if (!body.includes("hello from moonbox")) await sleep(200);
    }
    ok(body.includes("hello from moonbox"), "the published port serves the page");
    step("the container's page");
    await page.click("tbody a[href^='#container/']");
    await page.waitForFunction(() => document.body.innerText.includes("response:200"), { timeout: 30000 });
    ok(true, "the container's page follows its logs (the request is there)");
    await page.waitForSelector("svg.chart", { timeout: 30000 });
    ok((await text()).includes("memory"), "live stats with charts");

    // a shell through the exec WebSocket
    step("a shell");
    await page.click("xpath/.//button[text()='Open a shell']");
    await page.waitForSelector("input[placeholder^=command]:not([disabled])", { timeout: 30000 });
    await page.type("input[placeholder^=command]", "echo shell-$((40+2)) $HOSTNAME\n");
    await page.waitForFunction(() => document.body.innerText.includes("shell-42"), { timeout: 30000 });
    ok(true, "the shell runs a command in the container");
    await page.type("input[placeholder^=command]", "exit 3\n");
    await page.waitForFunction(() => document.body.innerText.includes("exited with code 3"), { timeout: 30000 });
    ok(true, "the shell's exit code is shown");
    await page.screenshot({ path: `${shots}/container.png`, fullPage: true });

    // stop, then remove, with the buttons
    step("stop and remove");
    await page.click("xpath/.//button[text()='stop']");
    await page.waitForFunction(() => document.body.innerText.includes("Exited"), { timeout: 60000 });
    ok(true, "stop: the page shows it exited");
    await page.click("xpath/.//button[text()='remove']");
    await page.waitForFunction(() => location.hash === "#containers", { timeout: 30000 });
    await page.waitForFunction(() => document.body.innerText.includes("No containers yet."), { timeout: 30000 });
    ok(true, "remove: back to an empty list");

    // the images page
    step("the images page");
    await page.goto(base + "#images");
    await page.waitForFunction((img) => document.body.innerText.includes(img), { timeout: 15000 }, image);
    ok(true, "the images page lists the pulled image");

    // the events page replays what happened (server-sent events)
    step("the events page");
    await page.goto(base + "#events");
    await page.waitForFunction(() => document.body.innerText.includes("container.removed"), { timeout: 15000 });
    ok(true, "the events page shows the container's events");
    ok(errors.length === 0, "no script errors in the page " + JSON.stringify(errors));
  } catch (e) {
    // what the page showed when it went wrong, for a log read after the fact
    const shown = await Promise.race([page ? page.evaluate(() => document.body.innerText) : "",
      sleep(10000).then(() => "(the page did not answer)")]).catch((x) => `(${x.message})`);
    console.log("# the page showed: " + JSON.stringify(String(shown).slice(0, 1500)));
    if (errors.length) console.log("# script errors in the page: " + JSON.stringify(errors));
    throw e;
  } finally {
    step("closing chromium");
    // a browser that does not close in 15 s is killed
    const proc = browser.process();
    await Promise.race([browser.close(), sleep(15000)]).catch(() => {});
    if (proc && proc.exitCode === null) proc.kill("SIGKILL");
  }
})().catch((e) => { console.log("# " + e.message); process.exit(1); });
