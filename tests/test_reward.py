"""Tests for reward.py: a table of equivalence cases by category (positives and negatives), extraction,
format, adversarial inputs that must return fast and never execute anything, threads and processes."""
import multiprocessing
import os
import random
import threading
import time

import pytest

from reward import accuracy_reward, extract_answer, format_reward, is_equiv

T = True
F = False

# (pred, gold, equivalent?) by category; every category has positives and negatives.
EQUIV = {
    "integers_decimals": [
        ("3", "3", T), ("3", "3.0", T), ("3.00", "3", T), ("0.5", ".5", T), ("-0.5", "-.5", T),
        ("007", "7", T), ("2.50", "2.5", T), ("1e3", "1000", T), ("3", "4", F), ("3.1", "3", F),
        ("0.5", "0.05", F), ("10", "100", F), ("-3", "3", F), ("0", "-0", T), ("12", "1.2", F),
        ("3.0001", "3", F), ("42", "42.", T), ("  42  ", "42", T), ("1", "", F), ("", "", F),
        ("3 4", "12", F), ("2 1/2", "1", F), ("1 000", "0", F), ("1 5", "15", F), ("3 4", "34", F),
        ("1 000", "1000", T),
    ],
    "fractions": [
        ("\\frac12", "0.5", T), ("\\frac{1}{2}", "1/2", T), ("1/2", "0.5", T), ("\\dfrac{3}{4}", "0.75", T),
        ("\\tfrac{3}{4}", "\\frac34", T), ("\\frac 34", "\\frac{3}{4}", T), ("\\frac{6}{8}", "\\frac{3}{4}", T),
        ("-\\frac{1}{2}", "\\frac{-1}{2}", T), ("\\frac{-1}{-2}", "\\frac12", T), ("\\frac{270}7", "270/7", T),
        ("\\frac9{19}", "9/19", T), ("\\frac{1}{3}", "0.333", F), ("\\frac{1}{3}", "0.3333333333333", F),
        ("\\frac12", "\\frac21", F), ("\\frac{1}{2}", "2", F), ("\\frac{3}{4}", "\\frac{4}{3}", F),
        ("1\\frac{4}{5}", "\\frac{9}{5}", T), ("137 \\frac{1}{2}", "137.5", T), ("-2\\frac12", "-2.5", T),
        ("1\\frac{4}{5}", "\\frac{4}{5}", F), ("\\frac{a}{b}", "a/b", T), ("\\frac{a}{b}", "b/a", F),
        # a mixed number inside an expression too, not a product; but not as an unbraced exponent or under one
        ("1\\frac{4}{5}+1", "\\frac{14}{5}", T), ("1\\frac{4}{5}+1", "\\frac{9}{5}", F), ("3-1\\frac12", "1.5", T),
        ("x = 2\\frac13", "\\frac73", T), ("2\\frac{1}{2}x", "\\frac{5x}{2}", T), ("10^2\\frac12", "50", T),
        ("1\\frac45^2", "\\frac{16}{25}", T), ("2\\frac{x}{3}", "\\frac{2x}{3}", T), ("1.5\\frac12", "0.75", T),
        ("\\cfrac{1}{2}", "0.5", T), ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", T),
    ],
    "thousands": [
        ("1,000", "1000", T), ("1,000,000", "1000000", T), ("10,\\!080", "10080", T),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100", T), ("1,234.5", "1234.5", T), ("58,500", "58500", T),
        ("1\\,000", "1000", T), ("10{,}000", "10000", T), ("10{,}000", "1000", F), ("1,000", "1", F), ("1,000", "100", F), ("(1,000, 2)", "(1000, 2)", F),
        ("(1,000, 2)", "(1, 0, 2)", T), ("1,2", "12", F), ("12,34", "1234", F), ("1,000", "1, 0", F),
        ("1,000, 2", "10002", F),  # thousands groups only in a whole number, not in a list
        ("1\\text{,}2", "2, 1", T), ("1\\mbox{,}2", "1, 2", T), ("1\\text{,}2", "12", F), ("1\\text {,}2", "1, 2", T),  # a \text{,} separator is kept
    ],
    "percent_money": [
        ("50\\%", "50", T), ("50%", "50", T), ("12.5\\%", "12.5", T), ("50\\%", "0.5", F), ("50%", "5", F),
        ("\\$18.90", "18.9", T), ("$18", "18", T), ("\\$32,\\!348", "32348", T), ("\\$36", "37", F),
        ("18 dollars", "18", T), ("\\$5", "\\$6", F),
    ],
    "units_text": [
        ("5 \\text{ cm}", "5", T), ("5\\text{cm}", "5", T), ("5 cm", "5", T), ("864 \\mbox{ inches}^2", "864", T),
        ("15\\mbox{ cm}^2", "15", T), ("5.4 \\text{ cents}", "5.4", T), ("\\frac{270}7\\text{ degrees}", "270/7", T),
        ("18 eggs", "18", T), ("5 \\text{ cm}", "6", F), ("5 cm", "50", F), ("\\text{5}", "5", T),
        ("864 \\text{ square inches}", "864", T), ("6 \\text{ cm}^2", "36", F), ("4 units", "5", F),
        ("5\\,\\mathrm{cm}", "5", T), ("5 \\mathrm{~cm}", "5", T), ("5 \\mathrm{cm}", "6", F),
        ("5 ft", "5", T), ("5", "5 xy", F), ("x^2 + 2", "x^2 + 2 xy", F), ("2", "2 pi", F),
        # a text that negates is no unit: the answer stays text and never equals the number
        ("\\text{not }5", "5", F), ("\\text{no } 5", "5", F), ("\\text{all but }5", "5", F), ("5\\text{ or none}", "5", F),
        ("\\text{never }5", "5", F), ("5 \\text{ except } 6", "5", F), ("\\text{not }5", "\\text{not }5", T),
        ("5 \\text{ notebooks}", "5", T), ("5 \\text{ nodes}", "5", T),  # the words only, not their letters
        # scale words multiply, they are not units to drop
        ("18 thousand", "18", F), ("18 thousand", "18000", T), ("1.5 million", "1.5", F), ("1.5 million", "1500000", T),
        ("1.5\\text{ million}", "1500000", T), ("1.5\\text{ million}", "1.5", F), ("3\\text{ million dollars}", "3000000", T),
        ("x = 5 million", "5000000", T), ("x = 5 million", "5", F),
        ("3 dozen", "36", T), ("18 thousand dollars", "18000", T), ("1,500 thousand", "1500000", T),
        ("2 hundreds", "200", T), ("2 hundred", "2", F), ("2 billion", "2000000000", T), ("2 billion", "2000000", F),
        ("18 Thousand", "18000", T), ("3 hundredths", "300", F),
    ],
    "text_answers": [
        ("\\text{(B)}", "B", T), ("B", "\\text{(B)}", T), ("(B)", "\\text{(B)}", T), ("\\text{(C)}", "\\text{(B)}", F),
        ("\\text{even}", "even", T), ("Even", "\\text{even}", T), ("odd", "\\text{even}", F),
        ("\\text{Navin}", "Navin", T), ("Evelyn", "\\text{Navin}", F), ("\\text{east}", "East", T),
        ("\\text{ellipse}", "ellipse", T), ("parabola", "\\text{ellipse}", F), ("\\textbf{yes}", "yes", T),
        ("no", "yes", F), ("2", "\\text{even}", F), ("\\text{even}", "2", F),
        # text on one side only: its content is read as an answer, sign, point and slash included
        ("\\text{5}", "-5", F), ("\\text{-5}", "5", F), ("\\text{-5}", "-5", T), ("\\text{1/2}", "12", F),
        ("\\text{1/2}", "0.5", T), ("\\text{3.14}", "314", F),
        ("(\\text{B})", "B", T), ("(\\text{B})", "\\text{(C)}", F), ("Answer: 5", "5", T),
    ],
    "degrees": [
        ("90^\\circ", "90", T), ("90^{\\circ}", "90", T), ("90°", "90", T), ("90 \\degree", "90", T),
        ("30^\\circ", "30", T), ("30", "30^\\circ", T), ("45^\\circ", "90^\\circ", F), ("90^\\circ", "9", F),
        ("120^\\circ", "\\frac{2\\pi}{3}", F),
    ],
    "latex_spacing": [
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", T), ("\\left(3,4\\right)", "(3,4)", T),
        ("\\!3", "3", T), ("3\\,\\!", "3", T), ("\\displaystyle\\frac12", "0.5", T), ("3\\quad", "3", T),
        ("\\left[ 1, 2 \\right]", "[1,2]", T), ("\\left( 3, 4 \\right)", "(3,5)", F), ("\\; 7", "7", T),
        ("$7$", "7", T), ("\\(7\\)", "7", T), ("\\[7\\]", "7", T), ("$7$", "8", F), ("\\bigl(2,3\\bigr)", "(2,3)", F),
        ("\\big(2,3\\big)", "(2,3)", T),
        ("5", "\\boxed{5}", T), ("\\frac12", "\\boxed{0.5}", T),  # a boxed gold is unwrapped
    ],
    "equations": [
        ("x = 5", "5", T), ("5", "x=5", T), ("x=5", "x = 5", T), ("y = 2x + 3", "2x+3", T), ("y=3+2x", "y = 2x + 3", T),
        ("x = 5", "6", F), ("y = 2x+3", "y = 2x-3", F), ("k = 2", "2", T), ("x_1 = 3", "3", T),
        ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z + 4 = 0", T), ("-10x + 14y - 22z = 8", "5x - 7y + 11z + 4 = 0", T),
        ("5x - 7y + 11z = 4", "5x - 7y + 11z + 4 = 0", F), ("x + y = 1", "x - y = 1", F), ("y = -2x", "-2x", T),
        ("x + y = 1", "1", F), ("x = -2", "y = -2", F), ("y = -\\frac{47}{16}", "-\\frac{47}{16}", T),
        ("x = 2x - 5", "2x - 5", F), ("x = \\exp(2)", "\\exp(2)", T), ("x \\in [-2,7]", "[-2,7]", T), ("[-2,7]", "x \\in [-2,7]", T), ("x \\in (-2,7]", "x \\in [-2,7]", F),
        # a named value meets an equation, or a value of another name: both are compared as equations
        ("2x - y + 3 = 0", "y = 2x + 3", T), ("y - 2x = 3", "y = 2x + 3", T), ("y = 2x + 3", "2x - y + 3 = 0", T),
        ("z = 2x - y + 8", "2x - y - z + 8 = 0", T), ("x = 2y", "2y = x", T), ("x = y/2", "y = 2x", T),
        ("2x = 10", "x = 5", T), ("y - 2x = 4", "y = 2x + 3", F), ("y = 2x", "y = 2z", F), ("x^2 = 25", "x = 5", F),
        ("2x - y + 3 = 0", "2x + 3", F), ("x = (1, 2)", "x + y = 3", F), ("x + y = 3", "x \\in [1, 2]", F),
        ("|x|(1+y) = x(1-y)", "|x| = x", F),  # equal where x < 0, but not 0 where the gold is (x > 0)
    ],
    "sqrt_pi": [
        ("2\\sqrt{2}", "\\sqrt{8}", T), ("\\sqrt8", "2\\sqrt2", T), ("\\sqrt{12}", "2\\sqrt{3}", T),
        ("\\sqrt[3]{8}", "2", T), ("\\sqrt[3]{16}", "2\\sqrt[3]{2}", T), ("\\sqrt{2}", "2", F), ("\\sqrt{2}", "1.414", F),
        ("2\\sqrt{2}", "\\sqrt{2}", F), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", T), ("11\\sqrt2", "11\\sqrt{2}", T),
        ("3 \\sqrt{5}", "\\sqrt{45}", T), ("3 \\sqrt{5}", "\\sqrt{15}", F), ("\\pi", "\\pi", T), ("2\\pi", "\\pi 2", T),
        ("8 \\pi", "8\\pi", T), ("\\frac{\\pi}{2}", "\\frac12\\pi", T), ("\\pi", "3.14", F), ("\\pi", "\\frac{22}{7}", F),
        ("18+2\\pi", "2\\pi+18", T), ("18+2\\pi", "18+\\pi", F), ("\\frac{\\pi^2}{8}", "\\pi^2/8", T),
        ("\\frac{20000}{\\pi}", "20000\\pi^{-1}", T), ("288 \\pi", "288\\pi", T), ("\\sqrt{-4}", "2i", T),
        ("1+2\\sqrt{3}", "2\\sqrt3+1", T), ("1+2\\sqrt{3}", "1+3\\sqrt2", F), ("(\\sqrt2+1)(\\sqrt2-1)", "1", T),
        ("\\sqrt{2}\\sqrt{3}", "\\sqrt6", T), ("\\sqrt{x^2}", "x", F),
    ],
    "scientific": [
        ("1.5 \\times 10^{3}", "1500", T), ("1.5e3", "1500", T), ("6.72 \\times 10^{-5}", ".0000672", T),
        ("6.72\\cdot10^{-5}", "0.0000672", T), ("1.5 \\times 10^{3}", "150", F), ("2E-2", "0.02", T),
        ("3 \\times 10^8", "300000000", T), ("3 \\times 10^8", "3 \\times 10^9", F), ("1e-3", "0.01", F),
    ],
    "negatives": [
        ("-3", "-3", T), ("-3", "3", F), ("- 3", "-3", T), ("-(3)", "-3", T), ("--3", "3", T),
        ("-\\frac{3}{8}", "-0.375", T), ("-\\frac{3}{8}", "0.375", F), ("-\\sqrt{3}", "-1\\sqrt3", T),
        ("-\\frac{\\pi}{6}", "-\\pi/6", T), ("-\\frac{\\pi}{6}", "\\pi/6", F), ("−5", "-5", T), ("-5", "5", F),
    ],
    "tuples": [
        ("(3, 4)", "(3,4)", T), ("(3,4)", "(4,3)", F), ("(1,-16,-4,43)", "(1, -16, -4, 43)", T),
        ("(1,-16,-4,43)", "(1,-16,-4,42)", F), ("(6,31,-1)", "(6,31)", F), ("(\\frac{3}{2}, -13)", "(1.5,-13)", T),
        ("3, 4", "(3,4)", T), ("4, 3", "(3,4)", F), ("(3,4)", "[3,4]", F), ("(8,-2)", "(8,-2)", T),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", T), ("(3, \\frac{\\pi}{2})", "(3, \\pi)", F),
        ("(0,3)", "(0, 3)", T), ("(2,4)", "(2,4]", F),
    ],
    "sets_lists": [
        ("2, 3", "3, 2", T), ("2, 3", "2, 4", F), ("x=2 \\text{ or } x=3", "2, 3", T), ("x=3 or x=2", "2,3", T),
        ("2 \\text{ and } 3", "3, 2", T), ("x=3, y=2", "x=2, y=3", F), ("a = 1, b = 4", "b = 1, a = 4", F),
        ("y=3, x=2", "x=2, y=3", T), ("x=2, y=3", "2, 3", T),
        # names order a pair: "y = 3, x = -1" is (x, y) = (-1, 3); a left side "(x, y) =" is taken off when sorted
        ("y = 3, x = -1", "(3,-1)", F), ("y = -1, x = 3", "(3,-1)", T), ("b = 2, a = 5", "(2,5)", F),
        ("(x, y) = (3,-1)", "(3,-1)", T), ("(x,y)=(3,-2)", "(3,-1)", F), ("(y, x) = (-1, 3)", "(3,-1)", F),
        # \pm inside braces, and with terms after it
        ("\\frac{1+\\sqrt5}{2}, \\frac{1-\\sqrt5}{2}", "\\frac{1 \\pm \\sqrt{5}}{2}", T),
        ("\\dfrac{1 \\pm \\sqrt 5}{2}", "\\frac{1 \\pm \\sqrt{5}}{2}", T), ("6, 2", "1 \\pm 2 + 3", T),
        ("6, -4", "1 \\pm 2 + 3", F),
        # text between numbers separates them
        ("2\\text{ hours }30\\text{ minutes}", "230", F), ("5\\text{ to }7", "57", F), ("\\{1, 2\\}", "\\{2, 1\\}", T), ("\\{1, 2\\}", "\\{1, 3\\}", F),
        ("1,-2", "-2,1", T), ("1,-2", "1,2", F), ("3, 5, 7", "7,5,3", T), ("3, 5, 7", "3, 5", F),
        ("3, 5", "3, 5, 7", F), ("2", "2, 3", F), ("2, 2, 3", "2, 3", F), ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", T),
        ("1 - \\sqrt{19}, 1 + \\sqrt{19}", "1 \\pm \\sqrt{19}", T), ("1 + \\sqrt{19}", "1 \\pm \\sqrt{19}", F),
        ("3 \\pm 2 \\sqrt{2}", "3 \\pm \\sqrt{8}", T), ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1-\\sqrt5, 1+\\sqrt5", T),
        ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5", F), ("\\{1,2\\}", "(1,2)", F), ("x = 1, x = -1", "\\pm 1", T),
        ("\\{3\\}", "3", T), ("\\emptyset", "\\emptyset", T),
        ("\\{x = 3\\}", "3", T),  # a named one-element set is its value
    ],
    "intervals": [
        ("(3,4]", "(3,4]", T), ("(3,4]", "(3,4)", F), ("[3,4]", "(3,4)", F), ("[3,4)", "[3,4)", T),
        ("(5,\\infty)", "(5, \\infty)", T), ("(5,\\infty)", "[5,\\infty)", F), ("(-\\infty, 0]", "(-\\infty,0]", T),
        ("(-\\infty, 0]", "(-\\infty,0)", F), ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)", T),
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 2] \\cup (3, \\infty)", F),
        ("(0,9) \\cup (9,36)", "(0,9)\\cup(9,36)", T), ("(0,36)", "(0,9) \\cup (9,36)", F),
        ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 8/3]", T), ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]",
                                                                    "[\\pi^2/8, 1.25\\pi^2]", T),
        ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt3,\\sqrt3)", T), ("(-\\infty, \\infty)", "(-\\infty, 5)", F),
        ("(2,12) \\cup (12,102)", "(2,12) \\cup (12,101)", F),
        # an interval is not a list of solutions, nor a list an interval; an open pair is both (the gold decides)
        ("[1, 2]", "1, 2", F), ("(1, 2]", "1, 2", F), ("(1, 2)", "1, 2", T), ("2, 3", "[2, 3]", F),
        ("2, 3", "(2, 3]", F),
    ],
    "matrices": [
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}", T),
        ("\\begin{pmatrix} 16/49 \\\\ 48/49 \\\\ 24/49 \\end{pmatrix}",
         "\\begin{pmatrix} \\frac{16}{49} \\\\ \\frac{48}{49} \\\\ \\frac{24}{49} \\end{pmatrix}", T),
        ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", T),
        ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix}-1&0\\\\0&1\\end{pmatrix}", F),
        ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", F),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", F),
        ("(1, 2)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", T), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)", T),
        ("(1, 3)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", F), ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}",
                                                                 "\\begin{pmatrix} -2 \\\\ -14 \\\\ 7 \\end{pmatrix}", F),
        # only a row or a column is a vector, and only a parenthesised one answers it
        ("(1, 2, 3, 4)", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
        ("[1, 2]", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", F),
    ],
    "expressions": [
        ("p - q", "-q + p", T), ("p - q", "q - p", F), ("(a+5)(b+2)", "ab+2a+5b+10", T), ("(a+5)(b+2)", "ab+10", F),
        ("x^2+2x+1", "(x+1)^2", T), ("x^2+2x+1", "(x-1)^2", F), ("8n^2 + 4n + 1", "1+4n+8n^2", T), ("2k+2", "2(k+1)", T),
        ("2k+2", "2k+1", F), ("3R^2", "3r^2", F), ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)", T),
        ("6r^2-4r-24", "2(3r^2-2r-12)", T), ("15x - 80", "15x-79", F), ("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9a}{20}", T),
        ("\\frac{x^2-1}{x-1}", "x+1", T), ("x", "y", F), ("xy", "yx", T), ("x \\cdot y", "xy", T), ("2 \\times 3", "6", T),
        ("12 \\div 4", "3", T), ("2^{10}", "1024", T), ("2^10", "1024", T), ("2**10", "1024", T), ("2^{-1}", "0.5", T),
        ("a^{b^c}", "a^{(b^c)}", T), ("|x|", "|-x|", T), ("|-3|", "3", T), ("5!", "120", T), ("\\binom{5}{2}", "10", T),
        ("e^{i\\pi}", "-1", T), ("\\ln e", "1", T), ("\\log_2 8", "3", T), ("\\cot x", "\\frac{\\cos x}{\\sin x}", T),
        ("\\sin^2 x + \\cos^2 x", "1", T), ("\\sin x", "\\cos x", F), ("\\sin(2x)", "2\\sin x\\cos x", T),
        ("\\alpha + \\beta", "\\beta+\\alpha", T), ("\\theta", "\\alpha", F), ("a_1 + a_2", "a_2 + a_1", T),
        ("a_1", "a_2", F), ("x^{100}", "x^{100}", T), ("x^{100}", "x^{101}", F), ("\\frac{1}{x}", "x^{-1}", T),
        ("\\sin(\\pi/6)", "\\frac12", T), ("\\sin\\frac{\\pi}{6}", "\\frac{\\sqrt3}{2}", F), ("|x|^2", "x^2", T),
        ("\\sqrt{x^2}", "|x|", T), ("e^{x}e^{y}", "e^{x+y}", T), ("\\exp(2)", "e^2", T), ("\\mathrm{e}^2", "e^2", T),
        ("\\ln(xy)", "\\ln x + \\ln y", F), ("\\log(100)", "2\\log 10", T), ("\\arctan 1", "\\frac{\\pi}{4}", T),
        ("2^{x}", "2^{x+1}/2", T), ("2^{x}", "x^2", F), ("\\mathbf{v} = (1,2)", "(1,2)", T),
        ("10^{1000x}", "100^{500x}", T),  # both overflow where x > 0: those points are skipped, not unequal
        ("10^{-8}x", "0", F), ("x + 10^{-8}", "x", F),  # ABS_TOL is 1e-12
        ("|-\\frac{1}{3}|", "0.3333333333333", F), ("|-\\frac13|", "\\frac13", T),  # |rational| stays exact
    ],
    "complex": [
        ("6+9i", "9i+6", T), ("6 - 5i", "6-5i", T), ("6-5i", "6+5i", F), ("1+2i", "i(2-i)", T), ("i^2", "-1", T),
        ("-2 + 7i", "7i-2", T), ("1 - 12i", "1-12 i", T), ("1+274i", "1+247i", F),
    ],
    "bases": [
        ("52_8", "52_8", T), ("52_{8}", "52_8", T), ("42", "52_8", F), ("52", "52_8", F), ("4210_{5}", "4210_5", T),
        ("2516_8", "2516_9", F),
        ("1.5_8", "1.7_8", F),  # a base-n numeral has no decimals
    ],
    "unparseable_gold": [
        ("anything", "\\weird{5}", F), ("5", "\\weird{5}", F), ("\\weird{5}", "\\weird{5}", T), ("1", "@@@", F),
        ("x", "3 < x < 5", F), ("3 < x < 5", "3 < x < 5", T), ("", "\\weird", F), ("1", "(", F), ("0", "1/0", F),
        ("1/0", "2/0", F), ("\\infty", "\\infty", T), ("\\infty", "-\\infty", F), ("x", "0/0", F),
        ("e^{1000}", "e^{999}", F), ("10^{300} e^{100}", "10^{300} e^{101}", F),  # no point to compare at
        ("\\,", "$", F), ("1\\frac{1}{0}", "2\\frac{1}{0}", F),  # a gold of nothing; a zero denominator
    ],
    "non_strings": [(None, "5", F), ("5", None, F), (5, "5", F), ("5", 5, T), ("5.0", 5, T), ("5", 6, F),
                    (["5"], "5", F), ("5", True, F)],
}
CASES = [(cat, p, g, ok) for cat, rows in EQUIV.items() for p, g, ok in rows]


@pytest.mark.parametrize("cat,pred,gold,ok", CASES, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(CASES)])
def test_is_equiv_table(cat, pred, gold, ok):
    assert is_equiv(pred, gold) is ok


def test_every_category_has_positives_and_negatives():
    for cat, rows in EQUIV.items():
        assert {ok for _, _, ok in rows} == {True, False}, cat
    assert len(CASES) >= 300


def test_symmetric_on_simple_pairs():
    for pred, gold in [("0.5", "\\frac12"), ("2\\sqrt2", "\\sqrt8"), ("2, 3", "3, 2"), ("(3,4]", "(3,4]"),
                       ("p-q", "-q+p"), ("50\\%", "50"), ("3", "4")]:
        assert is_equiv(pred, gold) == is_equiv(gold, pred)


EXTRACT = [
    ("so the area is \\boxed{12}.", "12"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\fbox{7}", "7"),
    ("answer \\boxed 5 done", "5"),
    ("$\\boxed 5$", "5"),
    ("\\boxed{3} and later \\boxed{4", "3"),  # unclosed last box: the earlier one
    ("\\boxed{\\boxed{9}}", "9"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("<think>x</think><answer> 42 </answer>", "42"),
    ("<answer>1</answer> <answer>2</answer>", "2"),
    ("<answer>\\boxed{3}</answer>", "3"),
    ("<think>..</think><answer>The answer is 18</answer>", "18"),  # R1-Zero-style prose inside the tags
    ("<answer>The final answer is 7. Done</answer>", "7"),
    ("<think>\\boxed{4}</think><answer>5</answer>", "4"),  # boxed first, as specified
    ("so 9 eggs.\n#### 18", "18"),
    ("#### Step 1\nwe get 3\n#### 1,000", "1,000"),
    ("#### Final answer\nno digits here", None),
    ("#### Step 1: add the eggs\n3 + 15 = 18\nThe answer is 18.", "18"),  # markdown headings are not answers
    ("#### 2. Totals\nThe answer is 18.", "18"),
    ("##### Part 2\nThe answer is 18.", "18"),
    ("##### 17\nThe answer is 18.", "18"),  # five hashes are not GSM8K's four
    ("#### 2.5", "2.5"),
    ("#### x = 5", "x = 5"),
    ("The answer is 42.", "42"),
    ("the final answer is: $3.5$. Done", "3.5"),
    ("The answer is 7\nmore text", "7"),
    ("no answer here", None),
    ("", None),
    (None, None),
    ("\\boxed{", None),
    ("\\boxedx{3}", None),
    ("<think>x</think><answer>5</answer><answer>", "5"),  # a reopened, unclosed tag: the last closed answer
    ("The answer is **$18$** dollars.", "18"), ("The answer is $ 18 $.", "18"), ("The answer is $ $", None),
]


@pytest.mark.parametrize("text,want", EXTRACT)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize("completion,gold,want", [
    ("... so \\boxed{\\frac12}.", "0.5", 1.0), ("... so \\boxed{\\frac13}.", "0.5", 0.0),
    ("<think>2+2</think><answer>4</answer>", "4", 1.0), ("<think>2+2</think><answer>5</answer>", "4", 0.0),
    ("Janet makes 9 * 2 = <<9*2=18>>18 dollars.\n#### 18", "18", 1.0), ("no answer", "4", 0.0),
    ("The answer is 1,000 dollars.", "1000", 1.0), (None, "4", 0.0), ("\\boxed{4}", None, 0.0),
    ("\\boxed{\\,}", "$", 0.0), ("<think>t</think><answer>Answer: 5</answer>", "5", 1.0),
])
def test_accuracy_reward(completion, gold, want):
    assert accuracy_reward(completion, gold) == want


@pytest.mark.parametrize("completion,think_in_prompt,want", [
    ("<think>reason</think><answer>5</answer>", False, 1.0),
    ("  <think>\nreason\n</think>\n\n<answer> 5 </answer>\n", False, 1.0),
    ("<think></think><answer>5</answer>", False, 1.0),  # an empty think block is still the format
    ("<think>reason</think><answer> </answer>", False, 0.0),  # the answer must not be empty
    ("<think>reason</think>text<answer>5</answer>", False, 0.0),  # nothing between the blocks
    ("hello <think>reason</think><answer>5</answer>", False, 0.0),  # nothing before
    ("<think>reason</think><answer>5</answer> bye", False, 0.0),  # nothing after
    ("<think>a</think><think>b</think><answer>5</answer>", False, 0.0),
    ("<think>a</think><answer>5</answer><answer>6</answer>", False, 0.0),
    ("<answer>5</answer><think>a</think>", False, 0.0),
    ("<think>reason<answer>5</answer></think>", False, 0.0),
    ("<think>a<answer>5</think></answer>", False, 0.0),  # the answer opens inside the think block
    ("<think>reason</think>", False, 0.0),
    ("reason</think><answer>5</answer>", False, 0.0),
    ("reason</think><answer>5</answer>", True, 1.0),  # the prompt ended with "<think>"
    ("\nreason\n</think>\n<answer>5</answer>", True, 1.0),
    ("<think>reason</think><answer>5</answer>", True, 0.0),  # a second <think>
    ("reason<answer>5</answer>", True, 0.0),
    (None, False, 0.0), ("", False, 0.0),
])
def test_format_reward(completion, think_in_prompt, want):
    assert format_reward(completion, think_in_prompt=think_in_prompt) == want


def test_format_reward_default_is_full_format():
    assert format_reward("<think>a</think><answer>1</answer>") == 1.0
    assert format_reward("a</think><answer>1</answer>") == 0.0


# ---- adversarial inputs: each must return quickly (a safety bound, not a benchmark)

ADVERSARIAL = [
    "9^{9^{9^9}}", "9^9^9^9", "2^{2^{2^{2^{2^{2}}}}}", "10^{10^{100}}", "(10^{5000})^{5000}", "2^{100000}",
    "x^{9^{9^{9}}}", "e^{e^{e^{e^{x}}}}", "\\sin(10^{1000})", "\\sqrt{10^{999}+1}", "10!" * 50, "1000!", "99999!",
    "1e99999", "1" * 5000, "9" * 200 + "/" + "7" * 200, "(" * 5000 + "1" + ")" * 5000, "{" * 5000, "\\frac{" * 3000,
    "\\sqrt{" * 400 + "2" + "}" * 400, "(" * 400 + "x" + ")" * 400, "-" * 5000 + "1", "x" * 900, "2^" * 400 + "2",
    "\\boxed{" * 5000, "\\boxed{" + "a" * 200_000, "a" * 200_000, "\x00" * 1000, "\ud800\udfff\ud800", "\x00\\boxed{1}\x00",
    "1" + "+1" * 450, "\\sqrt{2}" * 150, "\\sqrt{" + "3" * 99 + "}" + "\\sqrt{" + "7" * 99 + "}" * 10,
    "".join(f"\\sqrt{{{p}}}" for p in range(1000, 1300)), ",".join(["1"] * 2000), "\\{" + ",".join("x" * 60) + "\\}",
    "\\begin{pmatrix}" + "1 & " * 2000 + "\\end{pmatrix}", "\\left(" * 1000 + "\\right)" * 1000,
    "\\text{" * 3000, "x=" * 1000, "\\pm" * 500, "\\cup" * 500 + "(1,2)", "(1,2)\\cup" * 100 + "(1,2)",
    "\\log_{2}" * 200 + "8", "\\sin" * 300 + "x", "|" * 1001, "0." + "0" * 99 + "1", "1.5e9999",
    "(2^{64}+1)^{312}", "\\sqrt[3]{" + "9" * 99 + "}", "\\sqrt[10^{9}]{2}", "2^{\\pi^{\\pi^{\\pi}}}",
    "\\frac{1}{0}", "0^{-1}", "0^0", "\\infty - \\infty", "\\tan(\\pi/2)", "\\binom{10^{6}}{5}",
]


@pytest.mark.parametrize("k", range(len(ADVERSARIAL)))
def test_adversarial_inputs_are_fast_and_safe(k):
    bad = ADVERSARIAL[k]
    for pred, gold in [(bad, "1"), ("1", bad), (bad, bad + "1"), (bad, "x+1"), ("(1,2)", bad)]:
        t0 = time.perf_counter()
        assert is_equiv(pred, gold) in (True, False)
        assert accuracy_reward(f"so \\boxed{{{pred}}}", gold) in (0.0, 1.0)
        assert time.perf_counter() - t0 < 1.0, (pred[:50], gold[:50])
    t0 = time.perf_counter()
    extract_answer(bad), format_reward(bad)
    assert time.perf_counter() - t0 < 1.0


def test_random_junk_never_raises_and_is_fast():
    rng = random.Random(0)
    alphabet = list("0123456789+-*/^_()[]{}|!,.=x y\\$%&<>~") + ["\\frac", "\\sqrt", "\\pi", "\\pm", "\\cup", "\\text{",
                                                                 "\\boxed{", "\\left(", "\\right)", "\\infty", "\\cdot",
                                                                 "\\\\", "\\begin{pmatrix}", "\\end{pmatrix}", "\x00"]
    t0 = time.perf_counter()
    for _ in range(300):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert is_equiv(a, b) in (True, False)
        assert is_equiv(a, a) in (True, False)
    assert time.perf_counter() - t0 < 10.0


def _random_latex(rng, depth):
    """Random, mostly well-formed LaTeX with the constructs that make sympy slow: radicals, powers, logs."""
    if depth == 0 or rng.random() < 0.15:
        return rng.choice(["2", "7", "12", "0", "1.5", "x", "y", "\\pi", "e", "i", "\\theta",
                           str(rng.getrandbits(64))])
    a = lambda: _random_latex(rng, depth - 1)  # noqa: E731
    return rng.choice([
        lambda: f"{a()}+{a()}", lambda: f"{a()}-{a()}", lambda: f"{a()}{a()}", lambda: f"{a()}^{{{a()}}}",
        lambda: f"\\frac{{{a()}}}{{{a()}}}", lambda: f"\\sqrt[{rng.randint(2, 9)}]{{{a()}}}", lambda: f"|{a()}|",
        lambda: f"\\log_{{{a()}}}({a()})", lambda: f"\\sinh({a()})", lambda: f"e^{{{a()}}}", lambda: f"({a()})^{{{rng.randint(2, 5000)}}}",
        lambda: f"{a()}^{{\\frac{{{rng.randint(1, 9)}}}{{{rng.randint(2, 9)}}}}}", lambda: f"\\binom{{{rng.randint(0, 40)}}}{{3}}",
    ])()


def test_random_expressions_are_fast():
    rng = random.Random(1)
    worst = 0.0
    for _ in range(150):
        a, b = _random_latex(rng, rng.randint(1, 6)), _random_latex(rng, rng.randint(1, 6))
        t0 = time.perf_counter()
        assert is_equiv(a, b) in (True, False) and is_equiv(a, a.replace("x", "(x)")) in (True, False)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 1.0


@pytest.mark.parametrize("where", ["boxed", "answer", "gold", "pred", "hash"])
def test_code_payloads_do_nothing(where, tmp_path):
    target = tmp_path / "PWNED"
    payloads = [f"__import__('os').system('touch {target}')", f"exec(\"open('{target}','w')\")",
                f"eval(\"__import__('os').system('touch {target}')\")", f"\\text{{__import__('os').system('touch {target}')}}",
                f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {target}')",
                f"lambda: __import__('os').system('touch {target}')"]
    for p in payloads:
        if where == "boxed":
            accuracy_reward(f"\\boxed{{{p}}}", "1")
        elif where == "answer":
            accuracy_reward(f"<think>x</think><answer>{p}</answer>", "1")
        elif where == "gold":
            accuracy_reward("\\boxed{1}", p)
            is_equiv(p, p)
        elif where == "pred":
            is_equiv(p, "1")
        else:
            accuracy_reward(f"#### 1 {p}", "1")
    assert not target.exists()
    assert not os.path.exists("/tmp/PWNED_reward_test")


# Inputs that made sympy itself hang before we capped them (factoring radicands, merging radicals with
# huge common denominators, Abs/log/sinh evaluating through as_real_imag and evalf). They run in a thread
# and in a worker process with a timeout, so a regression fails instead of hanging the suite.
HARD = [
    "\\sqrt[0.673724]{12092897519021216992}",
    "".join(f"2^{{1/{p}}}" for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)),
    "\\sqrt[2.172718]{\\frac{6371439778276452282444920479862}{x}}",
    "|e^{(\\sin(x))^{3972}}|+\\sqrt{|(\\sin x)^{3000}|}",
    "\\log_{(|\\sqrt[4]{\\theta}^{1!}|^10)}(\\log_{\\frac{\\binom{20}{30}}{10}}(\\sinh(\\log_{i^42+\\theta}(\\log_{2}(0.182)^{\\frac{4}{3}}))))^{8}",
    "\\sqrt{3^{12000}+2}", "\\sin(e^{e^{e^{5}}})", "".join(f"\\sqrt{{{p}}}" for p in range(40001, 40129, 2)),
    "9^{9^{9^9}}+\\sqrt{" * 30 + "2" + "}" * 30, "(" * 5000 + "1" + ")" * 5000,
    # roots and non-integer powers of high-degree bases: one sympy call asking whether the base is real expanded
    # (re x + i im x)^1000 for minutes
    "\\sqrt{(2+x^{1000})^{2}}", "\\sqrt{(x^{1000})^{4/3}}", "\\sqrt{(x^{1000})^{i}}", "\\sqrt{(x^{1000})^{\\pi}}",
    "\\sqrt[97]{(x^{9999})^{i}}", "\\sqrt{(x^{30}+y^{30})^{30}}",
    # a sum of fractions, each within the caps, whose common denominator is not (tens of seconds in one Add)
    "+".join(f"{p}^{{-{20000 // p.bit_length()}}}" for p in [p for p in range(3, 200) if all(p % d for d in
                                                                                          range(2, p))][:40]),
    "1 + 3^{-10000}x + 5^{-6666}x + 7^{-6666}x + 11^{-5000}x + 13^{-5000}x",
]


def _hard_call(_=None):
    t0 = time.perf_counter()
    out = [is_equiv(h, "2") or is_equiv(h, h + "+0") for h in HARD] + [is_equiv("\\frac12", "0.5")]
    return out, time.perf_counter() - t0


def test_works_in_a_thread():
    result = {}
    th = threading.Thread(target=lambda: result.update(r=_hard_call()), daemon=True)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive()
    out, seconds = result["r"]
    assert out[-1] is True and seconds < 0.5 * len(HARD)


def test_works_in_a_worker_process():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out, seconds = pool.apply_async(_hard_call).get(timeout=60)
    assert out[-1] is True and seconds < 0.5 * len(HARD)


@pytest.mark.parametrize("pred, gold, want", [
    # words against math: a sign, an argument's sign or commas are not noise ("cot x" is fine)
    ("-cot x", "\\cot x", False), ("cot(-x)", "\\cot x", False), ("\\text{-cot x}", "\\cot x", False),
    ("sin x", "-\\sin x", False), ("sec x", "-\\sec x", False), ("x, y, z", "xyz", False), ("abc", "-abc", False),
    ("cot x", "\\cot x", True), ("-cot x", "-\\cot x", True), ("East", "\\text{East}", True),
    ("\\text{(B)}", "B", True),
    # \sin^{-1} is arcsin, not 1/sin
    ("\\tan^{-1} 1", "\\frac{\\pi}{4}", True), ("\\sin^{-1}\\frac12", "\\frac{\\pi}{6}", True),
    ("\\tan^{-1} x", "\\arctan x", True), ("\\sin^{-1} x", "\\csc x", False), ("\\tan^{-1} x", "\\cot x", False),
    ("\\sin^2 x", "\\sin x \\cdot \\sin x", True), ("\\sec^{-1} x", "\\cos x", False),
    # odd roots of negative numbers are the real roots
    ("\\sqrt[3]{-8}", "-2", True), ("\\sqrt[5]{-32}", "-2", True), ("-\\sqrt[3]{2}", "\\sqrt[3]{-2}", True),
    ("\\sqrt[3]{-8}", "2", False), ("\\sqrt[4]{16}", "2", True),
    # every variable takes both signs at the sample points, however many there are
    ("a+b+|c|", "a+b-c", False), ("a+b+\\sqrt{c^2}", "a+b-c", False),
    ("5x - 7y + 11\\cdot|z| + 4 = 0", "5x - 7y - 11z + 4 = 0", False), ("|a|+|b|+|c|+|d|", "a+b+c-d", False),
    ("a+b+c", "c+b+a", True),
    # review Z: a list answers a pair, but not an interval's ends nor two solutions of one variable
    ("x = -\\sqrt{3}, x = \\sqrt{3}", "(-\\sqrt{3}, \\sqrt{3})", False), ("2, \\infty", "(2,\\infty)", False),
    ("x=-\\sqrt3 \\text{ or } x=\\sqrt3", "(-\\sqrt{3}, \\sqrt{3})", False), ("x=2, y=3", "(2,3)", True),
    # a function's left side is a name, as a variable's is
    ("p(x) = x^3+3x-6", "x^3+3x-6", True), ("f(x)=2x+1", "2x+1", True), ("f(x)=2x+1", "2x+2", False),
    ("f(x) = 2x+1", "g(x) = 2x+1", False),
])
def test_review_q_cases(pred, gold, want):
    assert is_equiv(pred, gold) is want


@pytest.mark.parametrize("completion", [
    "The answer is **18**.", "The final answer is: **18**", "The answer is $18$, which is even.",
    "the answer is \\(18\\) indeed", "The answer is __18__",
])
def test_the_answer_is_reads_markdown_and_inline_math(completion):
    assert extract_answer(completion) == "18" and accuracy_reward(completion, "18") == 1.0
    dollars = completion.replace("18", "\\$18")  # an escaped dollar sign inside $..$ does not end it
    assert extract_answer(dollars) == "\\$18" and accuracy_reward(dollars, "18") == 1.0


def test_a_made_up_answer_line_is_not_read():
    """The plain template's prompt ends in 'Answer:'; a completion that goes on to a question of its own and
    answers it has not answered the one asked."""
    assert extract_answer("I am not sure.\nQuestion: What is 2 + 3?\nAnswer: 5") is None


def test_the_last_hashes_and_a_decimal_after_the_answer_is():
    assert extract_answer("#### 3\nlater\n#### 5") == "5"
    assert extract_answer("The answer is 3.5") == "3.5" and extract_answer("The answer is 3.5. Done") == "3.5"
