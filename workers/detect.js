#!/usr/bin/env node
// detect.js: a sluice model worker (JSON Lines on stdin/stdout, see docs/local-providers.md)
// answering "which of these classes does this frame show, and with what score" for the 80
// COCO classes (person, bicycle, car, ..., bottle, ...), with a CenterNet detector
// (MobileNetV3 backbone, trained on COCO: github.com/610265158/mobilenetv3_centernet, as
// converted for TensorFlow.js and shipped in the npm package @vladmandic/human) run by
// TensorFlow.js on its WebAssembly backend. Everything comes from npm packages pinned in
// workers/package.json (scripts/deps.sh runs `npm ci` here); nothing is fetched at run time.
//
// Requests:  {"id": 1, "method": "classify", "params": {"path": "f.jpg", "classes": ["person"]}}
//            {"id": 2, "method": "info"}
// Replies:   {"id": 1, "result": {"classes": [{"name": "person", "score": 0.81,
//              "boxes": [[x, y, w, h]]}], "width": 768, "height": 432}}
//            {"id": 2, "result": {"classes": ["person", ...], "model": "centernet"}}
//            {"id": 3, "error": "message"}
// A class's score is the detector's highest confidence for that class in the frame (0 when
// none), and its boxes are the detections scoring at least `min_box` (params.min_box, 0.3), in
// pixels of the image. The frame is scaled to fit 512 x 512 keeping its aspect ratio (the
// rest padded black): squeezing a 16:9 frame into the square halves the scores of people.
// Exit status 78: the packages are missing (sluice then does not restart the worker).
'use strict';
const fs = require('fs');
const path = require('path');
const readline = require('readline');

const EX_CONFIG = 78;

// COCO's 80 classes in the model's order; spaces written as underscores.
const CLASSES = ['person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck',
  'boat', 'traffic_light', 'fire_hydrant', 'stop_sign', 'parking_meter', 'bench', 'bird', 'cat',
  'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
  'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports_ball', 'kite',
  'baseball_bat', 'baseball_glove', 'skateboard', 'surfboard', 'tennis_racket', 'bottle',
  'wine_glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
  'broccoli', 'carrot', 'hot_dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted_plant',
  'bed', 'dining_table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell_phone',
  'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
  'teddy_bear', 'hair_drier', 'toothbrush'];
const INDEX = new Map(CLASSES.map((c, i) => [c, i]));
const SIZE = 512;

function log(msg) { process.stderr.write(msg + '\n'); }

let tf, tfc, jpeg;
try {
  tf = require('@tensorflow/tfjs-core');
  require('@tensorflow/tfjs-backend-wasm');
  tfc = require('@tensorflow/tfjs-converter');
  jpeg = require('jpeg-js');
} catch (e) {
  log('cannot load TensorFlow.js (' + e.message.split('\n')[0] + '): run `npm ci --ignore-scripts` in ' +
    __dirname + ' (scripts/deps.sh does)');
  process.exit(EX_CONFIG);
}

function modelDir() {
  if (process.env.SLUICE_DETECT_MODELS) return process.env.SLUICE_DETECT_MODELS;
  // the package's "exports" hide its files from require.resolve: look along the module paths
  for (const dir of module.paths) {
    const d = path.join(dir, '@vladmandic', 'human', 'models');
    if (fs.existsSync(path.join(d, 'centernet.json'))) return d;
  }
  log('cannot find the package @vladmandic/human: run `npm ci --ignore-scripts` in ' + __dirname);
  process.exit(EX_CONFIG);
}

let modelPromise = null;
function model() {
  if (!modelPromise) {
    modelPromise = (async () => {
      await tf.setBackend('wasm');
      await tf.ready();
      const dir = modelDir();
      const mj = JSON.parse(fs.readFileSync(path.join(dir, 'centernet.json'), 'utf8'));
      const specs = [];
      const bufs = [];
      for (const g of mj.weightsManifest) {
        specs.push(...g.weights);
        for (const p of g.paths) bufs.push(fs.readFileSync(path.join(dir, p)));
      }
      const b = Buffer.concat(bufs);
      return tfc.loadGraphModel({
        load: async () => ({
          modelTopology: mj.modelTopology, weightSpecs: specs, format: mj.format,
          generatedBy: mj.generatedBy, convertedBy: mj.convertedBy,
          weightData: b.buffer.slice(b.byteOffset, b.byteOffset + b.length),
        }),
      });
    })();
  }
  return modelPromise;
}

async function classify(params) {
  if (!params || typeof params.path !== 'string') throw new Error('classify needs params.path');
  const want = Array.isArray(params.classes) && params.classes.length ? params.classes : ['person'];
  for (const c of want) {
    if (!INDEX.has(c)) throw new Error("unknown class '" + c + "' (known: " + CLASSES.join(', ') + ')');
  }
  const minBox = typeof params.min_box === 'number' ? params.min_box : 0.3;
  let data;
  try {
    data = fs.readFileSync(params.path);
  } catch (e) {
    throw new Error('cannot read image ' + params.path + ': ' + e.code);
  }
  let img;
  try {
    img = jpeg.decode(data, { useTArray: true, formatAsRGBA: false, maxMemoryUsageInMB: 256 });
  } catch (e) {
    throw new Error(params.path + ' is not a JPEG image jpeg-js can decode: ' + e.message);
  }
  const m = await model();
  const scale = SIZE / Math.max(img.width, img.height);
  const h = Math.max(1, Math.round(img.height * scale));
  const w = Math.max(1, Math.round(img.width * scale));
  const out = tf.tidy(() => {
    const x = tf.tensor3d(Float32Array.from(img.data), [img.height, img.width, 3], 'float32');
    const r = tf.image.resizeBilinear(tf.expandDims(x, 0), [h, w]);
    const padded = tf.pad(r, [[0, 0], [0, SIZE - h], [0, SIZE - w], [0, 0]]);
    return m.execute(padded, 'tower_0/detections');
  });
  const dets = (await out.array())[0]; // [x1, y1, x2, y2, score, class] in model pixels
  out.dispose();
  const classes = want.map((name) => {
    const k = INDEX.get(name);
    let score = 0;
    const boxes = [];
    for (const d of dets) {
      if (d[5] !== k) continue;
      if (d[4] > score) score = d[4];
      if (d[4] >= minBox) {
        boxes.push([d[0] / scale, d[1] / scale, (d[2] - d[0]) / scale, (d[3] - d[1]) / scale].map(Math.round));
      }
    }
    return { name, score: Math.round(score * 1000) / 1000, boxes };
  });
  return { classes, width: img.width, height: img.height };
}

async function handle(req) {
  if (req.method === 'info') return { classes: CLASSES, model: 'centernet', backend: 'tfjs-wasm' };
  if (req.method === 'classify') return classify(req.params);
  throw new Error("unknown method '" + req.method + "' (known: classify, info)");
}

// One request at a time, in arrival order: the model is one WebAssembly instance.
let chain = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    process.stdout.write(JSON.stringify({ id: null, error: 'malformed request: ' + e.message }) + '\n');
    return;
  }
  chain = chain.then(async () => {
    let reply;
    try {
      reply = { id: req.id, result: await handle(req) };
    } catch (e) {
      reply = { id: req.id, error: e.message };
    }
    process.stdout.write(JSON.stringify(reply) + '\n');
  });
});
rl.on('close', () => { chain.then(() => process.exit(0)); });
