// The status page in headless Chromium, driven by Playwright:
//   node tests/js/status_page.mjs http://127.0.0.1:HTTP_PORT SCREENSHOT.png [USER:PASSWORD]
// Loads the page; with credentials, sees the anonymous MQTT connection refused and logs in.
// Waits for its MQTT connection (over the WebSocket listener) and a declared device, presses
// the lamp's ON button, waits for the broker's new state to come back over MQTT, sees the
// gateway's reading, checks that the page lists its own connection, and keeps a screenshot.
import { chromium } from "playwright-core";

const [url, screenshot, login] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on("console", (m) => console.log(`page console: ${m.text()}`));
  await page.goto(url);
  if (login) {
    const [user, pass] = login.split(":");
    await page.getByTestId("mqtt-state").filter({ hasText: "refused" }).waitFor({ timeout: 10000 });
    console.log("anonymous: refused");
    await page.getByPlaceholder("username").fill(user);
    await page.getByPlaceholder("password").fill(pass);
    await page.getByRole("button", { name: "Connect" }).click();
  }
  await page.getByTestId("mqtt-state").filter({ hasText: "connected" }).waitFor({ timeout: 10000 });
  console.log("page connected over MQTT/WebSocket");
  await page.getByText("Living room lamp (lamp)").waitFor();
  const power = page.getByTestId("value-lamp-power");
  await power.filter({ hasText: "OFF" }).waitFor({ timeout: 5000 });
  await page.getByTestId("on-lamp-power").click();
  await power.filter({ hasText: "ON" }).waitFor({ timeout: 5000 });
  await page.getByTestId("result-lamp-power").filter({ hasText: "done" }).waitFor();
  console.log("lamp power: OFF -> ON");
  // A refused command shows its reason and changes nothing.
  await page.getByTestId("input-lamp-brightness").fill("300");
  await page.getByTestId("set-lamp-brightness").click();
  await page.getByTestId("result-lamp-brightness").filter({ hasText: "refused" }).waitFor();
  console.log("brightness 300: refused");
  await page.getByTestId("availability-lamp").filter({ hasText: "online" }).waitFor();
  // A reading is shown beside the command values, as its file says.
  await page.getByTestId("value-gw-cpu_temp").filter({ hasText: "47.3" }).waitFor({ timeout: 5000 });
  console.log("reading cpu_temp: 47.3");
  await page.locator("#clients td", { hasText: "status-" }).first().waitFor({ timeout: 5000 });
  console.log("the page's own client is listed");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  console.log("ALL OK");
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
