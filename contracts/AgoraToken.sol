// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title AgoraToken
/// @notice The marketplace's reference ERC-20. On development chains (chain id 31337 or 1337) a faucet mints
/// up to `FAUCET_MAX` per call to anyone; elsewhere the faucet is disabled at deploy and always reverts.
/// The market and registry accept any ERC-20; this one exists so a local chain has a token to trade.
contract AgoraToken is ERC20 {
    /// @notice Largest faucet mint per call (10,000 tokens).
    uint256 public constant FAUCET_MAX = 10_000 ether;

    bool private immutable _faucetEnabled;

    event FaucetMinted(address indexed to, uint256 amount);

    /// @notice The faucet is off on this chain.
    error TokenFaucetDisabled(uint256 chainId);
    /// @notice A faucet mint above `max`.
    error TokenFaucetTooMuch(uint256 amount, uint256 max);
    /// @notice The faucet may only be enabled on a development chain.
    error TokenFaucetNotDevChain(uint256 chainId);

    /// @param initialHolder Receives `initialSupply`.
    /// @param initialSupply Tokens minted at deploy (18 decimals).
    /// @param enableFaucet Enable the dev faucet; only allowed on chain ids 31337 and 1337.
    constructor(address initialHolder, uint256 initialSupply, bool enableFaucet) ERC20("Agora Token", "AGORA") {
        if (enableFaucet && !_isDevChain()) revert TokenFaucetNotDevChain(block.chainid);
        _faucetEnabled = enableFaucet;
        if (initialSupply > 0) _mint(initialHolder, initialSupply);
    }

    /// @notice Dev chains only: mint `amount` (at most FAUCET_MAX) to `to`.
    function faucet(address to, uint256 amount) external {
        if (!_faucetEnabled) revert TokenFaucetDisabled(block.chainid);
        if (amount > FAUCET_MAX) revert TokenFaucetTooMuch(amount, FAUCET_MAX);
        _mint(to, amount);
        emit FaucetMinted(to, amount);
    }

    /// @notice Whether `faucet` works on this deployment.
    function faucetEnabled() external view returns (bool) {
        return _faucetEnabled;
    }

    function _isDevChain() private view returns (bool) {
        return block.chainid == 31337 || block.chainid == 1337;
    }
}
