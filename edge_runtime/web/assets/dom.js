// Shared by sortline's pages: every value from the station (class names, item ids, file and
// bundle names) reaches the page through textContent or an attribute set by the DOM, never as
// markup: no innerHTML anywhere.
"use strict";
const $ = id => document.getElementById(id);
// The keys that give a class, in class order, on the labelling page and the operator page's queue.
const KEYS = "123456789abcdefghijklmnopqrtvwxyz0";  // not s or u: the labelling page skips and undoes with them

// el("td", {className: "safe", title: "x"}, "text", otherNode): an element with its properties set
// and its children appended (strings become text nodes).
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// SVG elements for charts; attributes are numbers or fixed words, set one by one.
function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fill(parent, nodes) { parent.replaceChildren(...nodes); }
