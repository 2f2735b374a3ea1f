// Headless Chromium driver of the browser test (tests/integration/test_ohif_display.py).
//
// Usage: node ohif_driver.mjs request.json, where the request holds
//   {viewerUrl, studyUid, referenceSeriesUid, segSeriesUid, targetPoint: [x, y, z] (LPS mm),
//    chromium, outDir, modules (the folder holding node_modules/puppeteer-core)}.
// It opens the study in OHIF, shows the reference series on the slice nearest targetPoint, saves the
// viewport canvas (before.png), double-clicks the SEG thumbnail, answers OHIF's "open this Segmentation?"
// prompt, waits until the segmentation is loaded, returns to that slice and saves the canvas again
// (after.png, page.png). It prints one JSON line: the canvas size and the canvas -> world (LPS) mapping
// of both captures, so the caller decides where segment colours must appear. Exit status 1 with a
// message when the SEG does not load.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const require = createRequire(path.join(request.modules, 'package.json'));
const puppeteer = require('puppeteer-core');
const log = [];

function fail(message) {
  console.log(log.slice(-60).join('\n'));
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

async function waitFor(page, fn, arg, timeout, what) {
  try {
    await page.waitForFunction(fn, { timeout, polling: 250 }, arg);
  } catch (error) {
    await page.screenshot({ path: path.join(request.outDir, 'failure.png') }).catch(() => {});
    fail(`${what} (${error.message.split('\n')[0]})`);
  }
}

// Runs in the page: the viewport showing the reference series, moved to the slice nearest the point.
async function showSlice(arg) {
  const { referenceSeriesUid, targetPoint } = arg;
  const cs = window.cornerstone;
  for (const enabled of cs.getEnabledElements()) {
    const viewport = enabled.viewport;
    const ids = viewport.getImageIds ? viewport.getImageIds() : [];
    const series = ids.length ? cs.metaData.get('generalSeriesModule', ids[0]) : null;
    if (!series || series.seriesInstanceUID !== referenceSeriesUid) continue;
    let best = -1;
    let bestDistance = Infinity;
    ids.forEach((id, index) => {
      const plane = cs.metaData.get('imagePlaneModule', id);
      const row = plane.rowCosines, column = plane.columnCosines;
      const normal = [row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0]];
      const offset = targetPoint.map((v, i) => v - plane.imagePositionPatient[i]);
      const distance = Math.abs(offset[0] * normal[0] + offset[1] * normal[1] + offset[2] * normal[2]);
      if (distance < bestDistance) { bestDistance = distance; best = index; }
    });
    if (viewport.setImageIdIndex) {
      await viewport.setImageIdIndex(best);
    } else {
      cs.utilities.jumpToWorld(viewport, targetPoint);
    }
    viewport.render();
    return { index: best, distance: bestDistance, kind: viewport.type };
  }
  return null;
}

// Runs in the page: the reference viewport's canvas as PNG data and its canvas -> world mapping.
function capture(referenceSeriesUid) {
  const cs = window.cornerstone;
  for (const enabled of cs.getEnabledElements()) {
    const viewport = enabled.viewport;
    const id = viewport.getCurrentImageId && viewport.getCurrentImageId();
    const series = id ? cs.metaData.get('generalSeriesModule', id) : null;
    if (!series || series.seriesInstanceUID !== referenceSeriesUid) continue;
    const canvas = viewport.canvas;
    const css = [canvas.clientWidth, canvas.clientHeight];
    return {
      png: canvas.toDataURL('image/png'),
      pixels: [canvas.width, canvas.height],
      css,
      origin: Array.from(viewport.canvasToWorld([0, 0])),
      right: Array.from(viewport.canvasToWorld([css[0], 0])),
      down: Array.from(viewport.canvasToWorld([0, css[1]])),
      imageId: id,
    };
  }
  return null;
}

function save(name, shot) {
  fs.writeFileSync(path.join(request.outDir, name), Buffer.from(shot.png.split(',')[1], 'base64'));
  const { png, ...rest } = shot;
  return rest;
}

const browser = await puppeteer.launch({
  executablePath: request.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
    '--window-size=1400,1000'],
  defaultViewport: { width: 1400, height: 1000, deviceScaleFactor: 1 },
});
try {
  const page = await browser.newPage();
  page.on('console', (message) => log.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => log.push(`pageerror: ${error.message}`));
  page.on('response', (response) => {
    if (response.status() >= 400) log.push(`http ${response.status()} ${response.url()}`);
  });
  // OHIF's first-visit tour would cover the viewer (and swallow clicks): mark it as shown.
  await page.evaluateOnNewDocument(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
  await page.goto(`${request.viewerUrl}/viewer?StudyInstanceUIDs=${request.studyUid}`, { waitUntil: 'load' });
  const reference = request.referenceSeriesUid;
  const shown = (uid) => {
    const cs = window.cornerstone;
    if (!cs || !cs.getEnabledElements) return false;
    return cs.getEnabledElements().some((enabled) => {
      const vp = enabled.viewport;
      const id = vp.getCurrentImageId && vp.getCurrentImageId();
      const series = id ? cs.metaData.get('generalSeriesModule', id) : null;
      return Boolean(series && series.seriesInstanceUID === uid && vp.getImageData && vp.getImageData());
    });
  };
  await waitFor(page, shown, reference, 60000, 'the reference series was not displayed');
  const sliceBefore = await page.evaluate(showSlice, request);
  await new Promise((resolve) => setTimeout(resolve, 800));
  const before = save('before.png', await page.evaluate(capture, reference));

  const thumbnail = '[data-cy="study-browser-thumbnail-no-image"]';
  await waitFor(page, (sel) => document.querySelectorAll(sel).length > 0, thumbnail, 30000,
    'no SEG thumbnail in the study browser');
  const thumbnails = await page.$$(thumbnail);
  let clicked = false;
  for (const handle of thumbnails) {
    const text = await handle.evaluate((node) => node.innerText);
    if (/SEG/i.test(text)) { await handle.click({ count: 2 }); clicked = true; break; }
  }
  if (!clicked) fail(`no SEG thumbnail among ${thumbnails.length} image-less thumbnails`);

  // OHIF asks "Do you want to open this Segmentation?" in the viewport: answer Yes.
  const yes = () => [...document.querySelectorAll('button')].some((b) => b.innerText.trim() === 'Yes');
  await waitFor(page, yes, null, 60000, 'OHIF did not ask to open the segmentation: the SEG did not load');
  await page.evaluate(() => [...document.querySelectorAll('button')].find((b) => b.innerText.trim() === 'Yes').click());

  const loaded = () => {
    const tools = window.cornerstoneTools;
    const segmentations = tools.segmentation.state.getSegmentations();
    if (!segmentations.length) return false;
    return window.cornerstone.getEnabledElements().some((enabled) =>
      tools.segmentation.state.getSegmentationRepresentations(enabled.viewport.id).length > 0);
  };
  await waitFor(page, loaded, null, 60000, 'the SEG did not load in OHIF (no segmentation representation shown)');
  await waitFor(page, shown, reference, 30000, 'the reference series was not displayed after loading the SEG');
  const sliceAfter = await page.evaluate(showSlice, request);
  // Rendering is asynchronous (and slow on a loaded machine): wait up to 15 s for segment colours in the
  // viewport; the caller judges where they are, and fails if there are none.
  await page.waitForFunction((uid) => {
    const cs = window.cornerstone;
    const enabled = cs.getEnabledElements().find((e) => {
      const id = e.viewport.getCurrentImageId && e.viewport.getCurrentImageId();
      return id && cs.metaData.get('generalSeriesModule', id).seriesInstanceUID === uid;
    });
    if (!enabled) return false;
    const source = enabled.viewport.canvas;
    const copy = document.createElement('canvas');
    copy.width = source.width;
    copy.height = source.height;
    const context = copy.getContext('2d');
    context.drawImage(source, 0, 0);
    const data = context.getImageData(0, 0, copy.width, copy.height).data;
    for (let i = 0; i < data.length; i += 4) {
      if (Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]) > 30) return true;
    }
    return false;
  }, { timeout: 15000, polling: 500 }, reference).catch(() => log.push('no segment colour in the viewport after 15 s'));
  await new Promise((resolve) => setTimeout(resolve, 500));
  const after = save('after.png', await page.evaluate(capture, reference));
  await page.screenshot({ path: path.join(request.outDir, 'page.png') });
  const segments = await page.evaluate(() => window.cornerstoneTools.segmentation.state.getSegmentations()
    .map((s) => Object.keys(s.segments).length));
  console.log(log.slice(-40).join('\n'));
  console.log(JSON.stringify({ before, after, sliceBefore, sliceAfter, segments }));
} finally {
  await browser.close();
}
