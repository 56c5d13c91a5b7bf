#!/usr/bin/env node
// A native-`solc`-compatible command line over the npm `solc` package (solcjs, WebAssembly), fully offline.
//
//   solc-shim.js --version
//   solc-shim.js --standard-json [--base-path DIR] [--include-path DIR]... [--allow-paths A,B] < input.json
//
// Unlike `solcjs --standard-json`, stdout carries only the JSON output (no warning line), so py-solc-x
// (`solc_binary=` / SOLCX_BINARY_PATH), forge (`solc = "<path>"`) and other tools can drive it like native solc.
// Imports are resolved like native solc: <base-path>/<name>, then each <include-path>/<name>; as a fallback,
// `node_modules/<name>` found upwards from the base path (or the working directory). Files outside the base
// path, include paths, allowed paths and those node_modules folders are refused.
'use strict';

const fs = require('fs');
const path = require('path');

function usageError(message) {
  process.stderr.write(message + '\n');
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { version: false, standardJson: false, basePath: null, includePaths: [], allowPaths: [] };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value = null;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const takeValue = () => {
      if (value !== null) return value;
      if (i + 1 >= argv.length) usageError(`the required argument for option '${arg}' is missing`);
      return argv[++i];
    };
    switch (arg) {
      case '--version': opts.version = true; break;
      case '--standard-json': opts.standardJson = true; break;
      case '--base-path': opts.basePath = takeValue(); break;
      case '--include-path': opts.includePaths.push(takeValue()); break;
      case '--allow-paths':
        opts.allowPaths.push(...takeValue().split(',').filter((p) => p.length > 0));
        break;
      case '-': break; // stdin marker: standard JSON is always read from stdin
      default: usageError(`unrecognised option '${argv[i]}'`);
    }
  }
  return opts;
}

function loadSolc() {
  try {
    return require('solc');
  } catch (err) {
    usageError('solc-shim: the npm package `solc` is missing: run `npm ci` in the repo root');
  }
  return null;
}

function isInside(file, dir) {
  const rel = path.relative(dir, file);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function nodeModulesAbove(start) {
  const found = [];
  let dir = path.resolve(start);
  for (;;) {
    const candidate = path.join(dir, 'node_modules');
    if (fs.existsSync(candidate) && fs.statSync(candidate).isDirectory()) found.push(candidate);
    const parent = path.dirname(dir);
    if (parent === dir) return found;
    dir = parent;
  }
}

function makeImportCallback(opts) {
  const base = path.resolve(opts.basePath || process.cwd());
  const includes = opts.includePaths.map((p) => path.resolve(p));
  const fallback = nodeModulesAbove(base);
  const roots = [...new Set([base, ...includes, ...fallback])];
  const allowed = [...roots, ...opts.allowPaths.map((p) => path.resolve(p))];
  return function findImports(sourceUnitName) {
    const candidates = path.isAbsolute(sourceUnitName)
      ? [path.normalize(sourceUnitName)]
      : roots.map((root) => path.join(root, sourceUnitName));
    for (const file of candidates) {
      const real = fs.existsSync(file) ? fs.realpathSync(file) : null;
      if (real === null || !fs.statSync(real).isFile()) continue;
      if (!allowed.some((dir) => isInside(file, dir) || isInside(real, dir))) {
        return { error: `File outside of allowed directories: ${sourceUnitName}` };
      }
      return { contents: fs.readFileSync(real, 'utf8') };
    }
    return { error: `File not found. Searched the following locations: ${roots.map((r) => `"${r}"`).join(', ')}.` };
  };
}

function readStdin() {
  return fs.readFileSync(0, 'utf8');
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.version) {
    const solc = loadSolc();
    process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
    return;
  }
  if (!opts.standardJson) {
    usageError('solc-shim supports only --version and --standard-json (reading standard JSON on stdin)');
  }
  const solc = loadSolc();
  const input = readStdin();
  const output = solc.compile(input, { import: makeImportCallback(opts) });
  process.stdout.write(output + '\n');
}

main();
