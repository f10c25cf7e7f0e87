"""Task data and backbones: text classification (`text`) and multiple-choice QA
(`multiple_choice`).

Import the submodules directly (``from balora.tasks.text import load_rotten_tomatoes``); this
package imports nothing itself, so loading one task never pulls in another's dependencies.
"""
