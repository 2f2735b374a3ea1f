"""Helpers the tests share: peers, cards, golden data, study builders."""
