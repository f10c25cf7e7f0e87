"""Task data and backbones: text classification (`text`), multiple-choice QA
(`multiple_choice`), images (`vision`) and MOF structures with band-gap labels (`mof`).

Import the submodules directly (``from balora.tasks.text import load_rotten_tomatoes``); this
package imports nothing itself, so loading one task never pulls in another's dependencies.
"""
