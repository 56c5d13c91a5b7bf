// Hardhat 2 config: compiles contracts/ offline with the npm `solc` (solcjs) and runs `hardhat node`.
// Settings mirror marketplace/build.py (SOLC_VERSION, EVM_VERSION, OPTIMIZER_RUNS, VIA_IR): same sources, same
// source names and same settings give the same bytecode as `agora contracts build`.
'use strict';

// Never prompt (telemetry consent) or nag, in CI or on a terminal; Hardhat reads these after loading the config.
process.env.HARDHAT_DISABLE_TELEMETRY_PROMPT = process.env.HARDHAT_DISABLE_TELEMETRY_PROMPT || 'true';
process.env.HARDHAT_HIDE_SOLIDITY_SURVEY_MESSAGE = process.env.HARDHAT_HIDE_SOLIDITY_SURVEY_MESSAGE || 'true';
process.env.HARDHAT_TELEMETRY_DISABLED = process.env.HARDHAT_TELEMETRY_DISABLED || 'true';

const { subtask } = require('hardhat/config');
const { TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD } = require('hardhat/builtin-tasks/task-names');

const SOLC_VERSION = '0.8.30';
const solcjs = require('solc');
const LONG_VERSION = solcjs.version().replace(/\.Emscripten\.clang$/, ''); // 0.8.30+commit.73712a01

// Use the pinned npm solc instead of downloading a compiler.
subtask(TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD, async ({ solcVersion }) => {
  if (solcVersion !== SOLC_VERSION || !LONG_VERSION.startsWith(`${SOLC_VERSION}+`)) {
    throw new Error(
      `hardhat.config.js: asked for solc ${solcVersion}, node_modules has ${LONG_VERSION} (pinned ${SOLC_VERSION}); ` +
        'run `npm ci` in the repo root',
    );
  }
  return {
    compilerPath: require.resolve('solc/soljson.js'),
    isSolcJs: true,
    version: SOLC_VERSION,
    longVersion: LONG_VERSION,
  };
});

/** @type import('hardhat/config').HardhatUserConfig */
module.exports = {
  solidity: {
    version: SOLC_VERSION,
    settings: {
      evmVersion: 'shanghai',
      optimizer: { enabled: true, runs: 1000 },
      viaIR: true,
      metadata: { appendCBOR: true },
    },
  },
  paths: {
    sources: './contracts',
    artifacts: './artifacts-hardhat',
    cache: './cache',
  },
  networks: {
    hardhat: {
      chainId: 31337,
      hardfork: 'shanghai',
    },
  },
};
