#!/usr/bin/env python3
"""Make an RGBA test image from an 8-bit RGB PNG (stdlib only): a soft-edged disc of alpha
(opaque inside, a 6-pixel ramp, transparent outside). Usage:

    scripts/alpha_disc.py SRC.png OUT.png keep|black [RAMP]

RAMP is the width in pixels of the edge's ramp (default 6). `keep` leaves the colours under transparent pixels as they were; `black` sets them to 0 (as
many editors do). Used by docs/benchmarks.md, "Images with alpha".
"""
import zlib, struct, sys, math
def read_png(path):
    d=open(path,'rb').read(); pos=8; idat=b''
    while pos<len(d):
        n,t=struct.unpack('>I4s',d[pos:pos+8]); c=d[pos+8:pos+8+n]; pos+=12+n
        if t==b'IHDR': w,h,bd,ct=struct.unpack('>IIBB',c[:10])
        elif t==b'IDAT': idat+=c
    assert bd==8 and ct==2
    raw=zlib.decompress(idat); bpp=3; stride=w*3; out=bytearray(); prev=bytearray(stride)
    for y in range(h):
        f=raw[y*(stride+1)]; line=bytearray(raw[y*(stride+1)+1:(y+1)*(stride+1)])
        for i in range(stride):
            a=line[i-bpp] if i>=bpp else 0; b=prev[i]; c=prev[i-bpp] if i>=bpp else 0
            if f==1: line[i]=(line[i]+a)&255
            elif f==2: line[i]=(line[i]+b)&255
            elif f==3: line[i]=(line[i]+(a+b)//2)&255
            elif f==4:
                p=a+b-c; pa,pb,pc=abs(p-a),abs(p-b),abs(p-c)
                pr=a if pa<=pb and pa<=pc else (b if pb<=pc else c)
                line[i]=(line[i]+pr)&255
        out+=line; prev=line
    return w,h,out
def write_png(path,w,h,ct,data,ch):
    raw=b''.join(b'\x00'+bytes(data[y*w*ch:(y+1)*w*ch]) for y in range(h))
    def chunk(t,d): return struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d)&0xffffffff)
    open(path,'wb').write(b'\x89PNG\r\n\x1a\n'+chunk(b'IHDR',struct.pack('>IIBBBBB',w,h,8,ct,0,0,0))+chunk(b'IDAT',zlib.compress(raw,9))+chunk(b'IEND',b''))
def disc(w,h,rgb,mode,ramp):
    """RGBA pixels of `rgb` with the disc of alpha (see the module's doc)."""
    data=bytearray()
    for y in range(h):
        for x in range(w):
            r=math.hypot(x-w*0.5,(y-h*0.5)*1.2)
            a=max(0.0,min(1.0,(h*0.42-r)/ramp))
            px=rgb[(y*w+x)*3:(y*w+x)*3+3]
            if mode=='black' and a==0: px=b'\x00\x00\x00'
            data+=bytes(px)+bytes([round(a*255)])
    return data
if __name__=='__main__':
    src,out,mode=sys.argv[1],sys.argv[2],sys.argv[3]
    ramp=float(sys.argv[4]) if len(sys.argv)>4 else 6.0
    w,h,rgb=read_png(src)
    write_png(out,w,h,6,disc(w,h,rgb,mode,ramp),4)
