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

(async () => {
  const browser = await puppeteer.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  const errors = [];
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 900 });
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => d.accept());
    const base = `http://127.0.0.1:${port}/`;
    const text = () => page.evaluate(() => document.body.innerText);

    // connect with the token through the login form
    await page.goto(base);
    await page.waitForSelector("#token", { visible: true });
    await page.type("#token", token);
    await page.click("#login-form button");
    await page.waitForSelector("form.inline input[name=image]", { timeout: 15000 });
    ok(true, "the token form leads to the containers page");

    // run a container from the form
    await page.type("input[name=image]", image);
    await page.type("input[name=name]", "webui");
    await page.type("input[name=ports]", `${hostPort}:80`);
    await page.click("form.inline button[type=submit]");
    await page.waitForFunction(() => [...document.querySelectorAll("tbody tr")]
      .some((r) => r.innerText.includes("webui") && r.innerText.includes("Up")), { timeout: 180000 });
    ok(true, "the container runs and the list shows it as Up");
    ok((await text()).includes(`${hostPort}->80/tcp`), "the list shows its published port");

    // a request through the published port, then the container's page
    let body = "";
    for (let i = 0; i < 50 && !body.includes("hello from moonbox"); i++) {
      try { body = await (await fetch(`http://127.0.0.1:${hostPort}/`)).text(); } catch (e) { await sleep(200); }
    }
    ok(body.includes("hello from moonbox"), "the published port serves the page");
    await page.click("tbody a[href^='#container/']");
    await page.waitForFunction(() => document.body.innerText.includes("response:200"), { timeout: 30000 });
    ok(true, "the container's page follows its logs (the request is there)");
    await page.waitForSelector("svg.chart", { timeout: 30000 });
    ok((await text()).includes("memory"), "live stats with charts");

    // a shell through the exec WebSocket
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
    await page.click("xpath/.//button[text()='stop']");
    await page.waitForFunction(() => document.body.innerText.includes("Exited"), { timeout: 60000 });
    ok(true, "stop: the page shows it exited");
    await page.click("xpath/.//button[text()='remove']");
    await page.waitForFunction(() => location.hash === "#containers", { timeout: 30000 });
    await page.waitForFunction(() => document.body.innerText.includes("No containers yet."), { timeout: 30000 });
    ok(true, "remove: back to an empty list");

    // the images page
    await page.goto(base + "#images");
    await page.waitForFunction((img) => document.body.innerText.includes(img), { timeout: 15000 }, image);
    ok(true, "the images page lists the pulled image");
    ok(errors.length === 0, "no script errors in the page " + JSON.stringify(errors));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.log("# " + e.message); process.exit(1); });
