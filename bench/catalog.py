"""The fictional retailer's product catalog: Brightwater Home, a home-appliance and
smart-home retailer. Shared by the sample-data build and the scale generator so that
documents, products and transactions agree on SKUs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductLine:
    category: str
    subcategory: str
    brand: str
    code: str  # SKU prefix
    models: tuple[tuple[str, float], ...]  # (model name, list price)


CATALOG: tuple[ProductLine, ...] = (
    ProductLine(
        "Kitchen",
        "Espresso Machines",
        "Aurea",
        "KIT-ESP",
        (
            ("Aurea Barista One Espresso Machine", 349.0),
            ("Aurea Barista Pro Espresso Machine", 649.0),
            ("Aurea Barista Duo Dual-Boiler Espresso Machine", 1299.0),
            ("Aurea Compact Pod Espresso Maker", 129.0),
        ),
    ),
    ProductLine(
        "Kitchen",
        "Blenders",
        "Tidewell",
        "KIT-BLD",
        (
            ("Tidewell Vortex 900 Blender", 119.0),
            ("Tidewell Vortex 1500 Pro Blender", 229.0),
            ("Tidewell Personal Blender", 49.0),
        ),
    ),
    ProductLine(
        "Kitchen",
        "Kettles",
        "Brightwater",
        "KIT-KTL",
        (
            ("Brightwater Variable-Temp Kettle", 79.0),
            ("Brightwater Gooseneck Pour-Over Kettle", 99.0),
            ("Brightwater Classic Kettle 1.7L", 39.0),
        ),
    ),
    ProductLine(
        "Kitchen",
        "Air Fryers",
        "Tidewell",
        "KIT-AFR",
        (
            ("Tidewell CrispAir 4L Air Fryer", 89.0),
            ("Tidewell CrispAir 6L Dual-Basket Air Fryer", 159.0),
            ("Tidewell CrispAir Oven 12L", 199.0),
        ),
    ),
    ProductLine(
        "Kitchen",
        "Stand Mixers",
        "Aurea",
        "KIT-MIX",
        (
            ("Aurea Artisan 5Qt Stand Mixer", 399.0),
            ("Aurea Artisan Mini Stand Mixer", 279.0),
        ),
    ),
    ProductLine(
        "Kitchen",
        "Dishwashers",
        "Nordlys",
        "KIT-DSH",
        (
            ("Nordlys Quiet 44 Dishwasher", 849.0),
            ("Nordlys Quiet 40 Dishwasher", 649.0),
            ("Nordlys Compact Countertop Dishwasher", 379.0),
        ),
    ),
    ProductLine(
        "Kitchen",
        "Toasters",
        "Brightwater",
        "KIT-TST",
        (
            ("Brightwater 2-Slice Toaster", 49.0),
            ("Brightwater 4-Slice Long-Slot Toaster", 79.0),
            ("Brightwater Countertop Toaster Oven", 139.0),
        ),
    ),
    ProductLine(
        "Smart Home",
        "Sensors",
        "Brightwater",
        "SMH-SNS",
        (
            ("Brightwater Water Leak Sensor", 29.0),
            ("Brightwater Door and Window Sensor (2-pack)", 39.0),
            ("Brightwater Smoke and CO Alarm", 119.0),
        ),
    ),
    ProductLine(
        "Smart Home",
        "Thermostats",
        "Kestrel",
        "SMH-THM",
        (
            ("Kestrel T3 Smart Thermostat", 169.0),
            ("Kestrel T5 Learning Thermostat", 249.0),
            ("Kestrel Room Sensor (2-pack)", 59.0),
        ),
    ),
    ProductLine(
        "Smart Home",
        "Cameras",
        "Kestrel",
        "SMH-CAM",
        (
            ("Kestrel Indoor Cam 2K", 59.0),
            ("Kestrel Outdoor Cam Pro", 179.0),
            ("Kestrel Floodlight Cam", 229.0),
        ),
    ),
    ProductLine(
        "Smart Home",
        "Doorbells",
        "Kestrel",
        "SMH-DBL",
        (
            ("Kestrel Video Doorbell Wired", 149.0),
            ("Kestrel Video Doorbell Battery", 179.0),
        ),
    ),
    ProductLine(
        "Smart Home",
        "Hubs and Plugs",
        "Brightwater",
        "SMH-HUB",
        (
            ("Brightwater Home Hub", 99.0),
            ("Brightwater Smart Plug Mini (4-pack)", 44.0),
            ("Brightwater Smart Plug Outdoor", 34.0),
            ("Brightwater Smart Light Switch", 49.0),
            ("Brightwater Smart Bulb A19 (2-pack)", 29.0),
        ),
    ),
    ProductLine(
        "Smart Home",
        "Locks",
        "Corvid",
        "SMH-LCK",
        (
            ("Corvid Smart Deadbolt", 229.0),
            ("Corvid Smart Lever Lock", 199.0),
            ("Corvid Keypad Add-On", 69.0),
        ),
    ),
    ProductLine(
        "Cleaning",
        "Robot Vacuums",
        "Nordlys",
        "CLN-RVC",
        (
            ("Nordlys Orbit R5 Robot Vacuum", 299.0),
            ("Nordlys Orbit R7 Robot Vacuum and Mop", 549.0),
            ("Nordlys Orbit R9 Self-Emptying Robot Vacuum", 899.0),
        ),
    ),
    ProductLine(
        "Cleaning",
        "Cordless Vacuums",
        "Nordlys",
        "CLN-CVC",
        (
            ("Nordlys Stick V8 Cordless Vacuum", 249.0),
            ("Nordlys Stick V12 Cordless Vacuum", 449.0),
            ("Nordlys Handheld H3 Vacuum", 99.0),
        ),
    ),
    ProductLine(
        "Cleaning",
        "Steam Mops",
        "Tidewell",
        "CLN-STM",
        (
            ("Tidewell SteamGlide Mop", 119.0),
            ("Tidewell SteamGlide 2-in-1 Mop", 159.0),
        ),
    ),
    ProductLine(
        "Cleaning",
        "Washing Machines",
        "Nordlys",
        "CLN-WSH",
        (
            ("Nordlys EcoWash 9kg Front Loader", 899.0),
            ("Nordlys EcoWash 7kg Front Loader", 699.0),
            ("Nordlys EcoDry 8kg Heat-Pump Dryer", 1049.0),
        ),
    ),
    ProductLine(
        "Climate",
        "Air Purifiers",
        "Brightwater",
        "CLM-PUR",
        (
            ("Brightwater PureAir 300 Air Purifier", 199.0),
            ("Brightwater PureAir 500 Air Purifier", 329.0),
            ("Brightwater PureAir HEPA Filter 300", 39.0),
            ("Brightwater PureAir HEPA Filter 500", 49.0),
        ),
    ),
    ProductLine(
        "Climate",
        "Dehumidifiers",
        "Tidewell",
        "CLM-DHM",
        (
            ("Tidewell DryZone 20L Dehumidifier", 229.0),
            ("Tidewell DryZone 35L Dehumidifier", 319.0),
        ),
    ),
    ProductLine(
        "Climate",
        "Fans and Heaters",
        "Brightwater",
        "CLM-FAN",
        (
            ("Brightwater Tower Fan 42in", 89.0),
            ("Brightwater Ceramic Heater 1500W", 69.0),
            ("Brightwater Oil-Filled Radiator", 99.0),
            ("Brightwater Ceiling Fan 52in Smart", 259.0),
        ),
    ),
    ProductLine(
        "Climate",
        "Heat Pumps",
        "Nordlys",
        "CLM-HPM",
        (
            ("Nordlys Mini-Split Heat Pump 12k BTU", 1499.0),
            ("Nordlys Mini-Split Heat Pump 18k BTU", 1899.0),
            ("Nordlys Portable Air Conditioner 10k BTU", 449.0),
        ),
    ),
    ProductLine(
        "Outdoor",
        "Grills",
        "Corvid",
        "OUT-GRL",
        (
            ("Corvid Ember 3-Burner Gas Grill", 499.0),
            ("Corvid Ember 4-Burner Gas Grill", 699.0),
            ("Corvid Pellet Smoker 700", 799.0),
            ("Corvid Grill Cover Large", 49.0),
        ),
    ),
    ProductLine(
        "Outdoor",
        "Lawn and Garden",
        "Corvid",
        "OUT-LWN",
        (
            ("Corvid Robo-Mow 600 Robotic Mower", 1199.0),
            ("Corvid 40V Cordless Mower", 429.0),
            ("Corvid 40V String Trimmer", 149.0),
            ("Corvid 40V Battery 5Ah", 179.0),
        ),
    ),
    ProductLine(
        "Outdoor",
        "Patio",
        "Brightwater",
        "OUT-PTO",
        (
            ("Brightwater Patio Heater", 249.0),
            ("Brightwater Solar Path Lights (6-pack)", 59.0),
            ("Brightwater Outdoor String Lights 48ft", 45.0),
        ),
    ),
    ProductLine(
        "Outdoor",
        "E-Bikes",
        "Kestrel",
        "OUT-EBK",
        (
            ("Kestrel Commuter E-Bike C1", 1599.0),
            ("Kestrel Cargo E-Bike X2", 2799.0),
            ("Kestrel E-Bike Battery 500Wh", 549.0),
        ),
    ),
    ProductLine(
        "Audio",
        "Speakers",
        "Aurea",
        "AUD-SPK",
        (
            ("Aurea Sound One Smart Speaker", 99.0),
            ("Aurea Sound Move Portable Speaker", 179.0),
            ("Aurea Sound Bar 5.1", 499.0),
            ("Aurea Sound Sub Wireless Subwoofer", 349.0),
        ),
    ),
    ProductLine(
        "Audio",
        "Headphones",
        "Aurea",
        "AUD-HPH",
        (
            ("Aurea Quiet 700 Noise-Cancelling Headphones", 299.0),
            ("Aurea Buds Pro Earbuds", 199.0),
            ("Aurea Buds Sport Earbuds", 129.0),
        ),
    ),
    ProductLine(
        "Networking",
        "Wi-Fi",
        "Kestrel",
        "NET-WIF",
        (
            ("Kestrel Mesh Wi-Fi 6 System (3-pack)", 299.0),
            ("Kestrel Mesh Wi-Fi 7 System (3-pack)", 549.0),
            ("Kestrel Wi-Fi 6 Router AX3000", 129.0),
            ("Kestrel Mesh Satellite Add-On", 119.0),
        ),
    ),
    ProductLine(
        "Networking",
        "Accessories",
        "Brightwater",
        "NET-ACC",
        (
            ("Brightwater Powerline Adapter Kit", 69.0),
            ("Brightwater 8-Port Gigabit Switch", 39.0),
            ("Brightwater USB-C Travel Charger 65W", 45.0),
            ("Brightwater Surge Protector 12-Outlet", 35.0),
        ),
    ),
    ProductLine(
        "Laundry and Care",
        "Irons and Steamers",
        "Tidewell",
        "LDC-IRN",
        (
            ("Tidewell PressPro Steam Iron", 69.0),
            ("Tidewell Handheld Garment Steamer", 59.0),
            ("Tidewell Steam Generator Iron Station", 249.0),
        ),
    ),
    ProductLine(
        "Laundry and Care",
        "Water",
        "Brightwater",
        "LDC-WTR",
        (
            ("Brightwater Under-Sink Water Filter", 189.0),
            ("Brightwater Filter Pitcher 10-Cup", 35.0),
            ("Brightwater Replacement Cartridge (3-pack)", 29.0),
            ("Brightwater Tankless Water Heater 18kW", 899.0),
        ),
    ),
)


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    brand: str
    category: str
    subcategory: str
    list_price: float


def products() -> list[Product]:
    """Every catalog product with its SKU, in a stable order."""
    out: list[Product] = []
    for line in CATALOG:
        for i, (name, price) in enumerate(line.models, start=1):
            out.append(Product(f"{line.code}-{100 + i * 10}", name, line.brand, line.category, line.subcategory, price))
    return out


if __name__ == "__main__":
    for p in products():
        print(f"{p.sku}\t{p.name}\t{p.category}/{p.subcategory}\t${p.list_price:,.2f}")
    print(len(products()))
