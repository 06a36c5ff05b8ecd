// Verilator harness for every mnq streaming unit (built by `mnq cosim`).
//
// Reads a stimulus written by mnq (configuration writes, input beats, the input-valid and
// output-ready patterns), drives the unit with exactly the protocol of `src/cycle/mod.rs`,
// and writes every output beat with the cycle it moved on. `top.h` (written by mnq next to
// the build) names the Verilated class as `Top`, defines MNQ_HAS_MASK for units with the
// per-lane `in_mask` port (the softmaxes) and MNQ_HAS_MODE for units with the `in_mode` port
// (the multi-method softmaxes); each beat of the stimulus carries its lane mask and its mode.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "top.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_vcd_c.h"
#endif

// Bit access for Verilator port types: integral for <= 64 bits, VlWide above.
template <typename T>
static void put_bit(T& port, int i, bool v) {
    if (v) port = (T)(port | ((T)1 << i));
    else port = (T)(port & ~((T)1 << i));
}
template <std::size_t N>
static void put_bit(VlWide<N>& port, int i, bool v) {
    if (v) port[i / 32] |= (1u << (i % 32));
    else port[i / 32] &= ~(1u << (i % 32));
}
template <typename T>
static bool get_bit(const T& port, int i) { return (port >> i) & 1; }
template <std::size_t N>
static bool get_bit(const VlWide<N>& port, int i) { return (port[i / 32] >> (i % 32)) & 1; }

template <typename T>
static void put_field(T& port, int off, int w, int64_t v) {
    for (int i = 0; i < w; i++) put_bit(port, off + i, (v >> (i < 64 ? i : 63)) & 1);
}
template <typename T>
static int64_t get_field(const T& port, int off, int w) {
    uint64_t u = 0;
    for (int i = 0; i < w; i++)
        if (get_bit(port, off + i)) u |= (uint64_t)1 << i;
    if (w < 64 && ((u >> (w - 1)) & 1)) u |= ~(uint64_t)0 << w;  // sign-extend
    return (int64_t)u;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: harness STIMULUS OUTPUT [VCD]\n";
        return 2;
    }
    std::ifstream in(argv[1]);
    std::string magic;
    int version, lanes, in_bits, out_bits;
    uint64_t max_cycles;
    size_t n_cfg, n_pat, n_beats, expect_out;
    in >> magic >> version;
    if (magic != "mnq-stim" || version != 3) {
        std::cerr << "harness: " << argv[1] << " is not an mnq stimulus (version 3)\n";
        return 2;
    }
    std::string key;
    in >> key >> lanes >> key >> in_bits >> key >> out_bits >> key >> expect_out >> key >> max_cycles;
    in >> key >> n_cfg;
    std::vector<uint32_t> cfg_addr(n_cfg), cfg_data(n_cfg);
    for (size_t i = 0; i < n_cfg; i++) in >> cfg_addr[i] >> cfg_data[i];
    std::string allow, ready;
    in >> key >> n_pat >> allow >> ready;
    in >> key >> n_beats;
    std::vector<std::vector<int64_t>> beats(n_beats, std::vector<int64_t>(lanes));
    std::vector<int> last(n_beats);
    std::vector<uint32_t> mask(n_beats), mode(n_beats);
    for (size_t b = 0; b < n_beats; b++) {
        in >> last[b] >> mask[b] >> mode[b];
        for (int l = 0; l < lanes; l++) in >> beats[b][l];
    }
    if (!in) {
        std::cerr << "harness: truncated stimulus " << argv[1] << "\n";
        return 2;
    }
#ifndef MNQ_HAS_MASK
    for (size_t b = 0; b < n_beats; b++)
        if (mask[b]) {
            std::cerr << "harness: beat " << b << " of " << argv[1] << " masks lanes, but this unit has no in_mask port\n";
            return 2;
        }
#endif
#ifndef MNQ_HAS_MODE
    for (size_t b = 0; b < n_beats; b++)
        if (mode[b]) {
            std::cerr << "harness: beat " << b << " of " << argv[1] << " selects a mode, but this unit has no in_mode port\n";
            return 2;
        }
#endif

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Top>(ctx.get());
#if VM_TRACE
    std::unique_ptr<VerilatedVcdC> vcd;
    if (argc > 3) {
        ctx->traceEverOn(true);
        vcd = std::make_unique<VerilatedVcdC>();
        top->trace(vcd.get(), 99);
        vcd->open(argv[3]);
    }
#endif
    FILE* out = std::fopen(argv[2], "w");
    if (!out) {
        std::cerr << "harness: cannot write " << argv[2] << "\n";
        return 2;
    }
    uint64_t cycle = 0, time = 0;
    auto edge = [&]() {
        top->clock = 1;
        top->eval();
#if VM_TRACE
        if (vcd) vcd->dump(time);
#endif
        time++;
        top->clock = 0;
        top->eval();
#if VM_TRACE
        if (vcd) vcd->dump(time);
#endif
        time++;
        cycle++;
    };
    top->clock = 0;
    top->reset = 1;
    top->cfg_we = 0;
    top->in_valid = 0;
#ifdef MNQ_HAS_MASK
    top->in_mask = 0;
#endif
#ifdef MNQ_HAS_MODE
    top->in_mode = 0;
#endif
    top->out_ready = 0;
    top->eval();
    edge();
    top->reset = 0;
    for (size_t i = 0; i < n_cfg; i++) {
        top->cfg_we = 1;
        top->cfg_addr = cfg_addr[i];
        top->cfg_data = cfg_data[i];
        top->eval();
        edge();
    }
    top->cfg_we = 0;
    size_t next = 0, got = 0, j = 0;
    while (got < expect_out && cycle < max_cycles) {
        bool a = n_pat ? allow[j % n_pat] == '1' : true;
        bool valid = a && next < n_beats;
        top->in_valid = valid;
        top->in_last = valid ? last[next] : 0;
        for (int l = 0; l < lanes; l++) put_field(top->in_data, l * in_bits, in_bits, valid ? beats[next][l] : 0);
#ifdef MNQ_HAS_MASK
        top->in_mask = valid ? mask[next] : 0;
#endif
#ifdef MNQ_HAS_MODE
        top->in_mode = valid ? mode[next] : 0;
#endif
        top->out_ready = n_pat ? ready[j % n_pat] == '1' : true;
        top->eval();
        if (valid && top->in_ready) next++;
        if (top->out_valid && top->out_ready) {
            std::fprintf(out, "%llu %d", (unsigned long long)cycle, (int)top->out_last);
            for (int l = 0; l < lanes; l++) std::fprintf(out, " %lld", (long long)get_field(top->out_data, l * out_bits, out_bits));
            std::fprintf(out, "\n");
            got++;
        }
        edge();
        j++;
    }
    std::fprintf(out, "cycles %llu\n", (unsigned long long)cycle);
    std::fclose(out);
#if VM_TRACE
    if (vcd) vcd->close();
#endif
    top->final();
    return 0;
}
