// Behavioural models of the Gowin cells synth_gowin maps cnnforge's designs to and Yosys ships
// only as blackboxes (share/gowin/cells_xtra_gw*.v): the 9x9 and 18x18 multipliers and the
// 18-Kbit block RAMs in their dual-port (DPX9B), semi-dual-port (SDPX9B) and single-port (SPX9)
// forms. Used by the
// gate-level simulation (sim/verify/gatesim.py), which refuses a netlist using a configuration
// these models leave out (see there), and checked against RTL simulation by
// tests/test_gatesim_cells.py (sim/verify/cell_probe.py).
//
// What they follow: Gowin's user guides for the DSP (UG287) and BSRAM (UG285) and the behaviour
// of Gowin's own simulation library (prim_sim.v), read, not copied: the 18,432 bits of a BSRAM
// are 2,048 nine-bit bytes; a port of width 9 addresses byte AD[13:3]; of width 18, the byte
// pair AD[13:4] with byte write enables AD[1:0]; of width 36 (SDPX9B only), the four bytes
// AD[13:5] with enables AD[3:0] (SDPX9B, SPX9). INIT_RAM_00 holds bytes 0..31, bit 0 first. A port reads when
// its CE is high and BLKSEL matches (a read of the address the other port writes in the same
// cycle returns the old contents); while it writes, its output keeps its value (WRITE_MODE 0),
// shows the new data (1, write-through) or the old (2, read-before-write). READ_MODE 0 is the
// bypass output, 1 adds the pipeline register (clock enable OCE). RESET clears the output
// registers (not the memory), at the clock (RESET_MODE "SYNC") or at once ("ASYNC").
// The multipliers' input, pipeline and output registers are not modelled: Yosys's dsp_map.v
// leaves them bypassed (AREG, BREG, PIPE_REG, OUT_REG, ... = 0), which gatesim.py checks.
// These models are checked against what RTL simulation computes, not against silicon.

// Both multipliers: operand A (or SIA when ASEL) times B (or SIB when BSEL), each signed when
// its ASIGN/BSIGN is high, the product W + W bits wide.
module cnnforge_gowin_mult #(parameter W = 9) (
    input [W-1:0] A, SIA, B, SIB, input ASIGN, BSIGN, ASEL, BSEL,
    output [2*W-1:0] DOUT, output [W-1:0] SOA, SOB);
    wire [W-1:0] a = ASEL ? SIA : A;
    wire [W-1:0] b = BSEL ? SIB : B;
    wire signed [W:0] a_ext = {ASIGN & a[W-1], a};
    wire signed [W:0] b_ext = {BSIGN & b[W-1], b};
    wire signed [2*W+1:0] product = a_ext * b_ext;
    assign DOUT = product[2*W-1:0];
    assign SOA = a;
    assign SOB = b;
endmodule

module MULT9X9 (A, SIA, B, SIB, ASIGN, BSIGN, ASEL, BSEL, CE, CLK, RESET, DOUT, SOA, SOB);
    input  [8:0] A, SIA, B, SIB;
    input  ASIGN, BSIGN, ASEL, BSEL, CE, CLK, RESET;
    output [17:0] DOUT;
    output [8:0] SOA, SOB;
    parameter AREG = 1'b0;
    parameter BREG = 1'b0;
    parameter OUT_REG = 1'b0;
    parameter PIPE_REG = 1'b0;
    parameter ASIGN_REG = 1'b0;
    parameter BSIGN_REG = 1'b0;
    parameter SOA_REG = 1'b0;
    parameter MULT_RESET_MODE = "SYNC";
    cnnforge_gowin_mult #(.W(9)) mult(.A(A), .SIA(SIA), .B(B), .SIB(SIB), .ASIGN(ASIGN),
        .BSIGN(BSIGN), .ASEL(ASEL), .BSEL(BSEL), .DOUT(DOUT), .SOA(SOA), .SOB(SOB));
endmodule

module MULT18X18 (A, SIA, B, SIB, ASIGN, BSIGN, ASEL, BSEL, CE, CLK, RESET, DOUT, SOA, SOB);
    input  [17:0] A, SIA, B, SIB;
    input  ASIGN, BSIGN, ASEL, BSEL, CE, CLK, RESET;
    output [35:0] DOUT;
    output [17:0] SOA, SOB;
    parameter AREG = 1'b0;
    parameter BREG = 1'b0;
    parameter OUT_REG = 1'b0;
    parameter PIPE_REG = 1'b0;
    parameter ASIGN_REG = 1'b0;
    parameter BSIGN_REG = 1'b0;
    parameter SOA_REG = 1'b0;
    parameter MULT_RESET_MODE = "SYNC";
    cnnforge_gowin_mult #(.W(18)) mult(.A(A), .SIA(SIA), .B(B), .SIB(SIB), .ASIGN(ASIGN),
        .BSIGN(BSIGN), .ASEL(ASEL), .BSEL(BSEL), .DOUT(DOUT), .SOA(SOA), .SOB(SOB));
endmodule

// One port of an 18-Kbit block RAM over the byte array: the first byte a word of WIDTH (9, 18,
// 36) at address AD covers, and whether a write enables its byte K.
`define GOWIN_BSRAM_FUNCTIONS \
    function [10:0] first_byte(input integer width, input [13:0] ad); \
        first_byte = width == 9 ? ad[13:3] : width == 18 ? {ad[13:4], 1'b0} \
                   : {ad[13:5], 2'b00}; \
    endfunction \
    function byte_enable(input integer width, input [13:0] ad, input integer k); \
        byte_enable = width == 9 ? 1'b1 : ad[k]; \
    endfunction

// The contents, from INIT_RAM_00..3F, as 2,048 bytes.
`define GOWIN_BSRAM_CONTENTS \
    parameter [287:0] \
    INIT_RAM_00 = 288'd0, INIT_RAM_01 = 288'd0, INIT_RAM_02 = 288'd0, INIT_RAM_03 = 288'd0, \
    INIT_RAM_04 = 288'd0, INIT_RAM_05 = 288'd0, INIT_RAM_06 = 288'd0, INIT_RAM_07 = 288'd0, \
    INIT_RAM_08 = 288'd0, INIT_RAM_09 = 288'd0, INIT_RAM_0A = 288'd0, INIT_RAM_0B = 288'd0, \
    INIT_RAM_0C = 288'd0, INIT_RAM_0D = 288'd0, INIT_RAM_0E = 288'd0, INIT_RAM_0F = 288'd0, \
    INIT_RAM_10 = 288'd0, INIT_RAM_11 = 288'd0, INIT_RAM_12 = 288'd0, INIT_RAM_13 = 288'd0, \
    INIT_RAM_14 = 288'd0, INIT_RAM_15 = 288'd0, INIT_RAM_16 = 288'd0, INIT_RAM_17 = 288'd0, \
    INIT_RAM_18 = 288'd0, INIT_RAM_19 = 288'd0, INIT_RAM_1A = 288'd0, INIT_RAM_1B = 288'd0, \
    INIT_RAM_1C = 288'd0, INIT_RAM_1D = 288'd0, INIT_RAM_1E = 288'd0, INIT_RAM_1F = 288'd0, \
    INIT_RAM_20 = 288'd0, INIT_RAM_21 = 288'd0, INIT_RAM_22 = 288'd0, INIT_RAM_23 = 288'd0, \
    INIT_RAM_24 = 288'd0, INIT_RAM_25 = 288'd0, INIT_RAM_26 = 288'd0, INIT_RAM_27 = 288'd0, \
    INIT_RAM_28 = 288'd0, INIT_RAM_29 = 288'd0, INIT_RAM_2A = 288'd0, INIT_RAM_2B = 288'd0, \
    INIT_RAM_2C = 288'd0, INIT_RAM_2D = 288'd0, INIT_RAM_2E = 288'd0, INIT_RAM_2F = 288'd0, \
    INIT_RAM_30 = 288'd0, INIT_RAM_31 = 288'd0, INIT_RAM_32 = 288'd0, INIT_RAM_33 = 288'd0, \
    INIT_RAM_34 = 288'd0, INIT_RAM_35 = 288'd0, INIT_RAM_36 = 288'd0, INIT_RAM_37 = 288'd0, \
    INIT_RAM_38 = 288'd0, INIT_RAM_39 = 288'd0, INIT_RAM_3A = 288'd0, INIT_RAM_3B = 288'd0, \
    INIT_RAM_3C = 288'd0, INIT_RAM_3D = 288'd0, INIT_RAM_3E = 288'd0, INIT_RAM_3F = 288'd0; \
    localparam [18431:0] INIT = { \
        INIT_RAM_3F, INIT_RAM_3E, INIT_RAM_3D, INIT_RAM_3C, INIT_RAM_3B, INIT_RAM_3A, INIT_RAM_39, INIT_RAM_38, \
        INIT_RAM_37, INIT_RAM_36, INIT_RAM_35, INIT_RAM_34, INIT_RAM_33, INIT_RAM_32, INIT_RAM_31, INIT_RAM_30, \
        INIT_RAM_2F, INIT_RAM_2E, INIT_RAM_2D, INIT_RAM_2C, INIT_RAM_2B, INIT_RAM_2A, INIT_RAM_29, INIT_RAM_28, \
        INIT_RAM_27, INIT_RAM_26, INIT_RAM_25, INIT_RAM_24, INIT_RAM_23, INIT_RAM_22, INIT_RAM_21, INIT_RAM_20, \
        INIT_RAM_1F, INIT_RAM_1E, INIT_RAM_1D, INIT_RAM_1C, INIT_RAM_1B, INIT_RAM_1A, INIT_RAM_19, INIT_RAM_18, \
        INIT_RAM_17, INIT_RAM_16, INIT_RAM_15, INIT_RAM_14, INIT_RAM_13, INIT_RAM_12, INIT_RAM_11, INIT_RAM_10, \
        INIT_RAM_0F, INIT_RAM_0E, INIT_RAM_0D, INIT_RAM_0C, INIT_RAM_0B, INIT_RAM_0A, INIT_RAM_09, INIT_RAM_08, \
        INIT_RAM_07, INIT_RAM_06, INIT_RAM_05, INIT_RAM_04, INIT_RAM_03, INIT_RAM_02, INIT_RAM_01, INIT_RAM_00}; \
    reg [8:0] mem [0:2047]; \
    integer i; \
    initial for (i = 0; i < 2048; i = i + 1) mem[i] = INIT[9 * i +: 9];

module DPX9B (DOA, DOB, DIA, DIB, BLKSELA, BLKSELB, ADA, ADB, WREA, WREB, CLKA, CLKB, CEA, CEB,
              OCEA, OCEB, RESETA, RESETB);
    parameter READ_MODE0 = 1'b0;
    parameter READ_MODE1 = 1'b0;
    parameter WRITE_MODE0 = 2'b00;
    parameter WRITE_MODE1 = 2'b00;
    parameter BIT_WIDTH_0 = 18;
    parameter BIT_WIDTH_1 = 18;
    parameter BLK_SEL_0 = 3'b000;
    parameter BLK_SEL_1 = 3'b000;
    parameter RESET_MODE = "SYNC";
    `GOWIN_BSRAM_CONTENTS
    input CLKA, CEA, CLKB, CEB, OCEA, OCEB, RESETA, RESETB, WREA, WREB;
    input [13:0] ADA, ADB;
    input [2:0] BLKSELA, BLKSELB;
    input [17:0] DIA, DIB;
    output [17:0] DOA, DOB;

    `GOWIN_BSRAM_FUNCTIONS

    reg [17:0] bypass_a = 18'd0, bypass_b = 18'd0, pipe_a = 18'd0, pipe_b = 18'd0;
    wire [10:0] first_a = first_byte(BIT_WIDTH_0, ADA);
    wire [10:0] first_b = first_byte(BIT_WIDTH_1, ADB);
    wire [17:0] old_a = BIT_WIDTH_0 == 9 ? {9'd0, mem[first_a]} : {mem[first_a + 1], mem[first_a]};
    wire [17:0] old_b = BIT_WIDTH_1 == 9 ? {9'd0, mem[first_b]} : {mem[first_b + 1], mem[first_b]};
    wire en_a = CEA && BLKSELA == BLK_SEL_0;
    wire en_b = CEB && BLKSELB == BLK_SEL_1;
    // the word as written: the enabled bytes new, the others old
    wire [17:0] new_a = {byte_enable(BIT_WIDTH_0, ADA, 1) ? DIA[17:9] : old_a[17:9],
                         byte_enable(BIT_WIDTH_0, ADA, 0) ? DIA[8:0] : old_a[8:0]};
    wire [17:0] new_b = {byte_enable(BIT_WIDTH_1, ADB, 1) ? DIB[17:9] : old_b[17:9],
                         byte_enable(BIT_WIDTH_1, ADB, 0) ? DIB[8:0] : old_b[8:0]};
    wire [17:0] read_a = WREA ? (WRITE_MODE0 == 2'b01 ? (BIT_WIDTH_0 == 9 ? {9'd0, DIA[8:0]} : new_a)
                                 : old_a) : old_a;
    wire [17:0] read_b = WREB ? (WRITE_MODE1 == 2'b01 ? (BIT_WIDTH_1 == 9 ? {9'd0, DIB[8:0]} : new_b)
                                 : old_b) : old_b;
    wire load_a = en_a && !(WREA && WRITE_MODE0 == 2'b00);
    wire load_b = en_b && !(WREB && WRITE_MODE1 == 2'b00);

    always @(posedge CLKA) if (en_a && WREA) begin
        if (byte_enable(BIT_WIDTH_0, ADA, 0)) mem[first_a] <= DIA[8:0];
        if (BIT_WIDTH_0 == 18 && ADA[1]) mem[first_a + 1] <= DIA[17:9];
    end
    always @(posedge CLKB) if (en_b && WREB) begin
        if (byte_enable(BIT_WIDTH_1, ADB, 0)) mem[first_b] <= DIB[8:0];
        if (BIT_WIDTH_1 == 18 && ADB[1]) mem[first_b + 1] <= DIB[17:9];
    end
    generate if (RESET_MODE == "ASYNC") begin : async_reset
        always @(posedge CLKA or posedge RESETA)
            if (RESETA) begin bypass_a <= 18'd0; pipe_a <= 18'd0; end
            else begin if (OCEA) pipe_a <= bypass_a; if (load_a) bypass_a <= read_a; end
        always @(posedge CLKB or posedge RESETB)
            if (RESETB) begin bypass_b <= 18'd0; pipe_b <= 18'd0; end
            else begin if (OCEB) pipe_b <= bypass_b; if (load_b) bypass_b <= read_b; end
    end else begin : sync_reset
        always @(posedge CLKA)
            if (RESETA) begin bypass_a <= 18'd0; pipe_a <= 18'd0; end
            else begin if (OCEA) pipe_a <= bypass_a; if (load_a) bypass_a <= read_a; end
        always @(posedge CLKB)
            if (RESETB) begin bypass_b <= 18'd0; pipe_b <= 18'd0; end
            else begin if (OCEB) pipe_b <= bypass_b; if (load_b) bypass_b <= read_b; end
    end endgenerate
    assign DOA = READ_MODE0 ? pipe_a : bypass_a;
    assign DOB = READ_MODE1 ? pipe_b : bypass_b;
endmodule

// Yosys's declaration of SDPX9B has RESETA and RESETB (Gowin's library: one RESET); the read
// port's output registers are cleared by RESETB, RESETA (the write port has no output) is unused.
module SDPX9B (CLKA, CEA, CLKB, CEB, OCE, RESETA, RESETB, ADA, ADB, BLKSELA, BLKSELB, DI, DO);
    parameter READ_MODE = 1'b0;
    parameter BIT_WIDTH_0 = 36;
    parameter BIT_WIDTH_1 = 36;
    parameter BLK_SEL_0 = 3'b000;
    parameter BLK_SEL_1 = 3'b000;
    parameter RESET_MODE = "SYNC";
    `GOWIN_BSRAM_CONTENTS
    input CLKA, CEA, CLKB, CEB, OCE, RESETA, RESETB;
    input [13:0] ADA, ADB;
    input [2:0] BLKSELA, BLKSELB;
    input [35:0] DI;
    output [35:0] DO;

    `GOWIN_BSRAM_FUNCTIONS

    reg [35:0] bypass = 36'd0, pipe = 36'd0;
    wire [10:0] first_a = first_byte(BIT_WIDTH_0, ADA);
    wire [10:0] first_b = first_byte(BIT_WIDTH_1, ADB);
    wire [35:0] old_b = BIT_WIDTH_1 == 9 ? {27'd0, mem[first_b]}
                      : BIT_WIDTH_1 == 18 ? {18'd0, mem[first_b + 1], mem[first_b]}
                      : {mem[first_b + 3], mem[first_b + 2], mem[first_b + 1], mem[first_b]};
    wire write = CEA && BLKSELA == BLK_SEL_0;
    wire read = CEB && BLKSELB == BLK_SEL_1;

    always @(posedge CLKA) if (write) begin
        if (byte_enable(BIT_WIDTH_0, ADA, 0)) mem[first_a] <= DI[8:0];
        if (BIT_WIDTH_0 >= 18 && ADA[1]) mem[first_a + 1] <= DI[17:9];
        if (BIT_WIDTH_0 == 36 && ADA[2]) mem[first_a + 2] <= DI[26:18];
        if (BIT_WIDTH_0 == 36 && ADA[3]) mem[first_a + 3] <= DI[35:27];
    end
    generate if (RESET_MODE == "ASYNC") begin : async_reset
        always @(posedge CLKB or posedge RESETB)
            if (RESETB) begin bypass <= 36'd0; pipe <= 36'd0; end
            else begin if (OCE) pipe <= bypass; if (read) bypass <= old_b; end
    end else begin : sync_reset
        always @(posedge CLKB)
            if (RESETB) begin bypass <= 36'd0; pipe <= 36'd0; end
            else begin if (OCE) pipe <= bypass; if (read) bypass <= old_b; end
    end endgenerate
    assign DO = READ_MODE ? pipe : bypass;
endmodule

// One port, reading and writing at AD: DPX9B's port A, widths 9, 18 and 36.
module SPX9 (DO, DI, BLKSEL, AD, WRE, CLK, CE, OCE, RESET);
    parameter READ_MODE = 1'b0;
    parameter WRITE_MODE = 2'b00;
    parameter BIT_WIDTH = 36;
    parameter BLK_SEL = 3'b000;
    parameter RESET_MODE = "SYNC";
    `GOWIN_BSRAM_CONTENTS
    input CLK, CE, OCE, RESET, WRE;
    input [13:0] AD;
    input [2:0] BLKSEL;
    input [35:0] DI;
    output [35:0] DO;

    `GOWIN_BSRAM_FUNCTIONS

    reg [35:0] bypass = 36'd0, pipe = 36'd0;
    wire [10:0] first = first_byte(BIT_WIDTH, AD);
    wire [35:0] old = BIT_WIDTH == 9 ? {27'd0, mem[first]}
                    : BIT_WIDTH == 18 ? {18'd0, mem[first + 1], mem[first]}
                    : {mem[first + 3], mem[first + 2], mem[first + 1], mem[first]};
    wire [35:0] written = {byte_enable(BIT_WIDTH, AD, 3) ? DI[35:27] : old[35:27],
                           byte_enable(BIT_WIDTH, AD, 2) ? DI[26:18] : old[26:18],
                           byte_enable(BIT_WIDTH, AD, 1) ? DI[17:9] : old[17:9],
                           byte_enable(BIT_WIDTH, AD, 0) ? DI[8:0] : old[8:0]};
    wire [35:0] width_mask = BIT_WIDTH == 9 ? 36'h1ff : BIT_WIDTH == 18 ? 36'h3ffff : {36{1'b1}};
    wire en = CE && BLKSEL == BLK_SEL;
    wire load = en && !(WRE && WRITE_MODE == 2'b00);
    wire [35:0] read = (WRE && WRITE_MODE == 2'b01) ? written & width_mask : old;

    always @(posedge CLK) if (en && WRE) begin
        if (byte_enable(BIT_WIDTH, AD, 0)) mem[first] <= DI[8:0];
        if (BIT_WIDTH >= 18 && AD[1]) mem[first + 1] <= DI[17:9];
        if (BIT_WIDTH == 36 && AD[2]) mem[first + 2] <= DI[26:18];
        if (BIT_WIDTH == 36 && AD[3]) mem[first + 3] <= DI[35:27];
    end
    generate if (RESET_MODE == "ASYNC") begin : async_reset
        always @(posedge CLK or posedge RESET)
            if (RESET) begin bypass <= 36'd0; pipe <= 36'd0; end
            else begin if (OCE) pipe <= bypass; if (load) bypass <= read; end
    end else begin : sync_reset
        always @(posedge CLK)
            if (RESET) begin bypass <= 36'd0; pipe <= 36'd0; end
            else begin if (OCE) pipe <= bypass; if (load) bypass <= read; end
    end endgenerate
    assign DO = READ_MODE ? pipe : bypass;
endmodule

`undef GOWIN_BSRAM_FUNCTIONS
`undef GOWIN_BSRAM_CONTENTS

// The PLL passes its input clock through (the testbench runs the core at the build's clock
// directly) and locks after 16 cycles; TBUF as the platform's outputs use it, always driving
// (gatesim.py checks that every OEN is tied low): Verilator takes no tristate here.
module rPLL (CLKOUT, CLKOUTP, CLKOUTD, CLKOUTD3, LOCK, CLKIN, CLKFB, FBDSEL, IDSEL, ODSEL, DUTYDA,
             PSDA, FDLY, RESET, RESET_P);
    input CLKIN, CLKFB, RESET, RESET_P;
    input [5:0] FBDSEL, IDSEL, ODSEL;
    input [3:0] PSDA, FDLY, DUTYDA;
    output CLKOUT, LOCK, CLKOUTP, CLKOUTD, CLKOUTD3;
    parameter FCLKIN = "100.0";
    parameter DYN_IDIV_SEL = "false";
    parameter IDIV_SEL = 0;
    parameter DYN_FBDIV_SEL = "false";
    parameter FBDIV_SEL = 0;
    parameter DYN_ODIV_SEL = "false";
    parameter ODIV_SEL = 8;
    parameter PSDA_SEL = "0000";
    parameter DYN_DA_EN = "false";
    parameter DUTYDA_SEL = "1000";
    parameter CLKOUT_FT_DIR = 1'b1;
    parameter CLKOUTP_FT_DIR = 1'b1;
    parameter CLKOUT_DLY_STEP = 0;
    parameter CLKOUTP_DLY_STEP = 0;
    parameter CLKFB_SEL = "internal";
    parameter CLKOUT_BYPASS = "false";
    parameter CLKOUTP_BYPASS = "false";
    parameter CLKOUTD_BYPASS = "false";
    parameter DYN_SDIV_SEL = 2;
    parameter CLKOUTD_SRC = "CLKOUT";
    parameter CLKOUTD3_SRC = "CLKOUT";
    parameter DEVICE = "GW1N-1";
    reg [4:0] count = 5'd0;
    always @(posedge CLKIN) if (!count[4]) count <= count + 5'd1;
    assign CLKOUT = CLKIN;
    assign CLKOUTP = CLKIN;
    assign CLKOUTD = CLKIN;
    assign CLKOUTD3 = CLKIN;
    assign LOCK = count[4];
endmodule

module TBUF (O, I, OEN);
    input I, OEN;
    output O;
    assign O = I;
endmodule
